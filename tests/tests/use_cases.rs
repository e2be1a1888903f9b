//! The account, messaging and group use cases over the in-memory reference store, with the real
//! bcrypt and JWT adapters: what the services do to state, asserted on state (what a later
//! call reads back), where the mockall tests in `application` assert calls.
//!
//! They live here rather than in `application` because that crate cannot depend on an
//! adapter: the store would be built against a second copy of the ports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use application::ports::{Clock, Event, Notifier, NotifyError, SearchPrefix, SystemClock};
use application::{
    AccountError, AccountService, GroupError, GroupLimits, GroupService, MessagingError, MessagingService,
    MessagingStores, NewAccount, Revocations, StreamFollower, SyncEvent, SyncItem,
};
use async_trait::async_trait;
use chat_memory::MemoryStore;
use domain::{
    Chat, ClientMessageId, ConversationId, Cursor, FullName, GroupName, Message, MessageBody, Password, Role,
    SyncCursor, User, UserId, Username,
};
use secrecy::SecretString;

/// The services over one fresh memory store, and what they announced.
struct World {
    store: Arc<MemoryStore>,
    accounts: AccountService,
    messaging: MessagingService,
    groups: GroupService,
    announced: Arc<Announced>,
}

/// Every event the services handed to the notifier, with its recipients (or the group it
/// went to).
#[derive(Default)]
struct Announced(Mutex<Vec<(Vec<UserId>, Event)>>, Mutex<Vec<(ConversationId, Event)>>);

#[async_trait]
impl Notifier for Announced {
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError> {
        self.0.lock().expect("no test panics while holding it").push((users.to_vec(), event.clone()));
        Ok(())
    }

    async fn notify_group(&self, group: &ConversationId, event: &Event) -> Result<(), NotifyError> {
        self.1.lock().expect("no test panics while holding it").push((group.clone(), event.clone()));
        Ok(())
    }

    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError> {
        self.notify(&[], event).await
    }
}

impl Announced {
    /// Every event sent to users, with its recipients.
    fn to_users(&self) -> Vec<(Vec<UserId>, Event)> {
        self.0.lock().expect("no test panics while holding it").clone()
    }

    /// Every event sent to a group's members, with the group.
    fn to_groups(&self) -> Vec<(ConversationId, Event)> {
        self.1.lock().expect("no test panics while holding it").clone()
    }

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
        let messaging = MessagingService::new(
            MessagingStores {
                users: store.clone(),
                conversations: store.clone(),
                messages: store.clone(),
                changes: store.clone(),
                groups: store.clone(),
            },
            announced.clone(),
            clock.clone(),
        );
        let groups =
            GroupService::new(store.clone(), store.clone(), announced.clone(), clock, GroupLimits::default());
        Self { store, accounts, messaging, groups, announced }
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
        let sent = self.messaging.send(&from.id, &to.id, body(text), None, None).await.expect("sending");
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

/// The messages (direct or group entries) among sync items, in order.
fn messages(items: &[SyncItem]) -> Vec<Message> {
    items
        .iter()
        .filter_map(|item| match &item.event {
            SyncEvent::Message(message) => Some(message.clone()),
            SyncEvent::Read { .. } | SyncEvent::Updated(_) => None,
        })
        .collect()
}

/// A plain stream cursor: a user in no group.
fn at(position: u64) -> SyncCursor {
    SyncCursor::at(Cursor::new(position).expect("a valid position"))
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
    let sync = world.messaging.sync(&ben.id, SyncCursor::START, None).await.unwrap();
    assert_eq!(bodies(&messages(&sync.items)), ["hi", "hello", "elsewhere"]);
    assert_eq!(sync.items.iter().map(|item| item.cursor.stream.position()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!((&sync.next, sync.has_more), (&sync.items[2].cursor, false));
    let rest = world.messaging.sync(&ben.id, sync.items[0].cursor.clone(), Some(1)).await.unwrap();
    assert_eq!((bodies(&messages(&rest.items)), rest.has_more), (vec!["hello"], true));

    // Each participant was told of each message at its position in their own stream.
    let told = world.announced.cursors();
    for (item, message) in sync.items.iter().zip(messages(&sync.items)) {
        let body = message.body.as_str().to_owned();
        assert!(told.contains(&(ben.id.clone(), body, item.cursor.stream)), "{told:?}");
    }
    let anns = world.messaging.sync(&ann.id, SyncCursor::START, None).await.unwrap();
    assert!(anns.items.iter().zip(messages(&anns.items)).all(|(item, message)| told.contains(&(
        ann.id.clone(),
        message.body.as_str().to_owned(),
        item.cursor.stream
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
    let first = world.messaging.send(&ann.id, &ben.id, body("once"), client_id("key-1"), None).await.unwrap();
    let retry = world.messaging.send(&ann.id, &ben.id, body("once"), client_id("key-1"), None).await.unwrap();
    assert!(first.created && !retry.created);
    assert_eq!(retry.message, first.message);

    let reused =
        world.messaging.send(&ann.id, &ben.id, body("something else"), client_id("key-1"), None).await;
    assert!(matches!(reused, Err(MessagingError::ClientIdReused)), "{reused:?}");

    let history = world.messaging.history(&ben.id, &ann.id, None, None).await.unwrap();
    assert_eq!(history.messages, [first.message]);
    assert_eq!(world.messaging.sync(&ben.id, SyncCursor::START, None).await.unwrap().items.len(), 1);
    assert_eq!(world.announced.cursors().len(), 2, "one event for each side, once");
}

#[tokio::test]
async fn unknown_users_and_cursors_beyond_the_stream_are_refused_and_leave_no_trace() {
    let world = World::new();
    let (ann, ben) = (world.register("ann").await, world.register("ben").await);
    let stranger = UserId::generate();

    let to_stranger = world.messaging.send(&ann.id, &stranger, body("hello?"), None, None).await;
    assert!(matches!(to_stranger, Err(MessagingError::UserNotFound)), "{to_stranger:?}");
    let with_stranger = world.messaging.history(&ann.id, &stranger, None, None).await;
    assert!(matches!(with_stranger, Err(MessagingError::UserNotFound)), "{with_stranger:?}");
    let untouched = world.messaging.history(&ann.id, &ben.id, None, None).await.unwrap();
    assert_eq!((untouched.conversation, untouched.messages), (None, Vec::new()));
    assert_eq!(world.messaging.conversations(&ann.id, None, None).await.unwrap().conversations, []);

    world.send(&ann, &ben, "one").await;
    let beyond = world.messaging.sync(&ann.id, at(2), None).await;
    assert!(matches!(beyond, Err(MessagingError::BeyondStream)), "{beyond:?}");
    let caught_up = world.messaging.sync(&ann.id, at(1), None).await.unwrap();
    assert_eq!((caught_up.items.len(), caught_up.next), (0, at(1)));
}

// ---------------------------------------------------------------------------------------------
// Groups

impl World {
    async fn create_group(&self, owner: &User, members: &[&User], name: &str) -> ConversationId {
        let members = members.iter().map(|u| u.id.clone()).collect();
        let name = GroupName::parse(name).expect("a valid group name");
        self.groups.create(&owner.id, name, members).await.expect("creating a group").group.id
    }

    async fn post(&self, from: &User, group: &ConversationId, text: &str) -> Message {
        let sent = self
            .messaging
            .send_to_conversation(&from.id, group, body(text), None, None)
            .await
            .expect("posting");
        assert!(sent.created);
        sent.message
    }

    /// Everything `user` follows from the start, `limit` at a time, and where it ends.
    async fn sync_all(&self, user: &User, limit: u32) -> (Vec<SyncItem>, SyncCursor) {
        let (mut items, mut since) = (Vec::new(), SyncCursor::START);
        loop {
            let page = self.messaging.sync(&user.id, since, Some(limit)).await.expect("syncing");
            assert!(page.items.len() <= limit as usize);
            items.extend(page.items);
            since = page.next;
            if !page.has_more {
                return (items, since);
            }
        }
    }

    /// `user`'s unread count of `conversation` in their conversation list.
    async fn unread(&self, user: &User, conversation: &ConversationId) -> u64 {
        let list = self.messaging.conversations(&user.id, None, None).await.expect("listing");
        let summary = list.conversations.iter().find(|s| s.conversation.id() == conversation);
        summary.expect("the conversation is listed").unread()
    }
}

/// Ann, Ben and Cat, with names the system entries use.
async fn three(world: &World) -> (User, User, User) {
    (
        world.register_named("ann", "Ann").await,
        world.register_named("ben", "Ben").await,
        world.register_named("cat", "Cat").await,
    )
}

#[tokio::test]
async fn a_member_removed_and_added_again_sees_the_group_up_to_the_removal_and_from_the_return() {
    let world = World::new();
    let (ann, ben, cat) = three(&world).await;
    let crew = world.create_group(&ann, &[&ben, &cat], "crew").await;
    world.post(&ann, &crew, "hello all").await;
    world.post(&ben, &crew, "hi ann").await;
    world.groups.remove_member(&ann.id, &crew, &ben.id).await.expect("removing ben");
    world.post(&ann, &crew, "ben is gone").await;

    // Ben, removed, may not read or post; nor may a stranger, who is told there is no group.
    let gone = world.messaging.conversation_history(&ben.id, &crew, None, None).await;
    assert!(matches!(gone, Err(MessagingError::NoLongerMember)), "{gone:?}");
    let gone = world.messaging.send_to_conversation(&ben.id, &crew, body("let me in"), None, None).await;
    assert!(matches!(gone, Err(MessagingError::NoLongerMember)), "{gone:?}");
    let dan = world.register("dan").await;
    assert!(matches!(world.groups.get(&dan.id, &crew).await, Err(GroupError::NotFound)));
    assert!(matches!(world.groups.get(&ben.id, &crew).await, Err(GroupError::NoLongerMember)));

    world.groups.add_members(&cat.id, &crew, vec![ben.id.clone()]).await.expect_err("cat is no admin");
    world.groups.set_role(&ann.id, &crew, &cat.id, Role::Admin).await.expect("making cat an admin");
    world.groups.add_members(&cat.id, &crew, vec![ben.id.clone()]).await.expect("adding ben again");
    world.post(&cat, &crew, "welcome back").await;

    let everything = [
        "Ann created the group \u{201c}crew\u{201d}",
        "hello all",
        "hi ann",
        "Ann removed Ben",
        "ben is gone",
        "Ann made Cat an admin",
        "Cat added Ben",
        "welcome back",
    ];
    let cats = world.messaging.conversation_history(&cat.id, &crew, None, None).await.unwrap();
    assert_eq!(bodies(&cats), everything);
    let bens = world.messaging.conversation_history(&ben.id, &crew, None, None).await.unwrap();
    assert_eq!(bodies(&bens), ["Cat added Ben", "welcome back"]);

    // Ben's sync: his first membership up to his removal, then from his return; paging
    // changes nothing, and each item's cursor resumes right after it.
    let bens_part = [&everything[..4], &everything[6..]].concat();
    for limit in [1, 2, 3, 50] {
        let (items, end) = world.sync_all(&ben, limit).await;
        assert_eq!(bodies(&messages(&items)), bens_part, "limit {limit}");
        assert_eq!(end.groups.get(&crew), Some(&8));
        for (i, item) in items.iter().enumerate() {
            let rest = world.messaging.sync(&ben.id, item.cursor.clone(), Some(50)).await.unwrap();
            assert_eq!(bodies(&messages(&rest.items)), bens_part[i + 1..], "after item {i}");
        }
    }

    // A live connection that starts from the beginning reads the same.
    let mut follower = StreamFollower::start(
        world.store.clone(),
        world.store.clone(),
        ben.id.clone(),
        Some(SyncCursor::START),
    )
    .await
    .unwrap();
    let mut followed = Vec::new();
    loop {
        let page = follower.catch_up().await.unwrap();
        if page.is_empty() {
            break;
        }
        followed.extend(page);
    }
    assert_eq!(bodies(&messages(&followed)), bens_part);
}

#[tokio::test]
async fn unread_counts_follow_sends_and_reads_and_own_entries_never_count() {
    let world = World::new();
    let (ann, ben, cat) = three(&world).await;
    let crew = world.create_group(&ann, &[&ben, &cat], "crew").await;
    assert_eq!((world.unread(&ann, &crew).await, world.unread(&ben, &crew).await), (0, 1));
    world.post(&ann, &crew, "one").await;
    let two = world.post(&cat, &crew, "two").await;
    assert_eq!(world.unread(&ann, &crew).await, 1);
    assert_eq!(world.unread(&ben, &crew).await, 3);
    assert_eq!(world.unread(&cat, &crew).await, 0, "cat's own send read everything before it");

    let marked = world.messaging.mark_read(&ben.id, &crew, &two.id).await.unwrap();
    assert_eq!(marked.seq, two.seq);
    assert!(marked.cursor.is_some());
    assert_eq!(world.unread(&ben, &crew).await, 0);
    let again = world.messaging.mark_read(&ben.id, &crew, &two.id).await.unwrap();
    assert_eq!(again.cursor, None, "nothing moved");

    // Ben's other devices learn it through his stream; the group gets a read receipt.
    let (items, _) = world.sync_all(&ben, 50).await;
    assert!(items.iter().any(|i| matches!(&i.event, SyncEvent::Read { seq, up_to, .. }
        if *seq == two.seq && *up_to == two.id)));
    let receipts = world.announced.to_groups();
    assert!(receipts.iter().any(|(group, event)| group == &crew
        && matches!(event, Event::MessagesRead { user, seq, .. } if *user == ben.id && *seq == two.seq)));

    // The list names the group's members.
    let list = world.messaging.conversations(&ann.id, None, None).await.unwrap();
    let preview = &list.members[&crew];
    assert_eq!(preview.count, 3);
    let mut named = preview.members.clone();
    named.sort();
    let mut expected = vec![ann.id.clone(), ben.id.clone(), cat.id.clone()];
    expected.sort();
    assert_eq!(named, expected);
    assert!(matches!(list.conversations[0].conversation, Chat::Group(_)));
}

#[tokio::test]
async fn a_direct_conversation_is_used_by_its_id_like_a_group() {
    let world = World::new();
    let (ann, ben, cat) = three(&world).await;
    let hi = world.send(&ann, &ben, "hi").await;
    let conversation = hi.conversation_id.clone();
    let reply =
        world.messaging.send_to_conversation(&ben.id, &conversation, body("hey"), None, None).await.unwrap();
    assert_eq!(reply.message.receiver_id.as_ref(), Some(&ann.id));
    let history = world.messaging.conversation_history(&ann.id, &conversation, None, None).await.unwrap();
    assert_eq!(bodies(&history), ["hi", "hey"]);
    assert_eq!((world.unread(&ann, &conversation).await, world.unread(&ben, &conversation).await), (1, 0));
    world.messaging.mark_read(&ann.id, &conversation, &reply.message.id).await.unwrap();
    assert_eq!(world.unread(&ann, &conversation).await, 0);
    let told = world.announced.to_users();
    assert!(told.iter().any(|(users, event)| users == std::slice::from_ref(&ben.id)
        && matches!(event, Event::MessagesRead { user, .. } if *user == ann.id)));

    let outsider = world.messaging.conversation_history(&cat.id, &conversation, None, None).await;
    assert!(matches!(outsider, Err(MessagingError::ConversationNotFound)), "{outsider:?}");
    let outsider =
        world.messaging.send_to_conversation(&cat.id, &conversation, body("psst"), None, None).await;
    assert!(matches!(outsider, Err(MessagingError::ConversationNotFound)), "{outsider:?}");
}

#[tokio::test]
async fn the_owner_leaving_hands_the_group_to_its_oldest_admin() {
    let world = World::new();
    let (ann, ben, cat) = three(&world).await;
    let crew = world.create_group(&ann, &[&ben, &cat], "crew").await;
    world.groups.set_role(&ann.id, &crew, &cat.id, Role::Admin).await.unwrap();
    let left = world.groups.leave(&ann.id, &crew).await.unwrap();
    assert_eq!(left.state.member(&cat.id).map(|m| m.role), Some(Role::Owner));
    assert_eq!(left.entry.unwrap().body.as_str(), "Ann left; Cat is the owner now");
    let state = world.groups.get(&cat.id, &crew).await.unwrap();
    assert_eq!(state, left.state);
}
