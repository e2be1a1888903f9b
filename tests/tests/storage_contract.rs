//! The storage contract: every repository behaviour is written once, over the ports, and run
//! against every backend on a database of its own.
//!
//! `contract!` turns each behaviour `b` into `sqlite::b`, `postgres::b`, `mongodb::b` and
//! `memory::b` (the in-memory reference store), so
//! `cargo test -p tests --test storage_contract mongodb::` runs one backend. The backends'
//! servers must be running: PostgreSQL (see `tests::postgres_admin_url`) and MongoDB
//! (`scripts/start-mongodb.sh`).
//!
//! Timestamps are built with millisecond precision: that is what every backend keeps (MongoDB
//! dates hold milliseconds; the SQL stores keep more).

use std::collections::HashSet;
use std::sync::Arc;

use application::ports::{
    Appended, ConversationKey, ConversationPage, ConversationSummary, RepoError, Revocation, SearchPrefix,
    StoredMessage, StreamItem, UserQuery,
};
use chrono::{DateTime, Duration, Utc};
use domain::{
    Avatar, ClientMessageId, Conversation, ConversationId, Cursor, FullName, Gender, Message, MessageBody,
    MessageId, ParticipantPair, PasswordHash, Timestamp, User, UserId, Username,
};
use server::Storage;

/// One `#[tokio::test]` per behaviour per backend, each on a fresh database that is removed
/// afterwards, also when the behaviour fails.
macro_rules! contract {
    ($($behaviour:ident),* $(,)?) => {
        mod sqlite {
            contract!(@backend Sqlite; $($behaviour),*);
        }
        mod postgres {
            contract!(@backend Postgres; $($behaviour),*);
        }
        mod mongodb {
            contract!(@backend Mongodb; $($behaviour),*);
        }
        mod memory {
            contract!(@backend Memory; $($behaviour),*);
        }
    };
    (@backend $backend:ident; $($behaviour:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $behaviour() {
                super::run(tests::Backend::$backend, |storage| Box::pin(super::$behaviour(storage))).await;
            }
        )*
    };
}

type BoxFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>;

async fn run(backend: tests::Backend, behaviour: for<'a> fn(&'a Storage) -> BoxFuture<'a>) {
    use futures_util::FutureExt as _;

    let database = tests::TestDatabase::create(backend).await;
    let storage = server::open_storage(&database.settings)
        .await
        .unwrap_or_else(|e| panic!("opening the {} store: {e:#}", backend.name()));
    let outcome = std::panic::AssertUnwindSafe(behaviour(&storage)).catch_unwind().await;
    drop(storage);
    database.remove().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

contract!(
    user_insert_then_find_by_id_round_trips_every_field,
    user_find_by_id_of_an_unknown_id_is_none,
    names_and_messages_stored_under_earlier_rules_stay_readable,
    user_find_by_username_ignores_case,
    user_timestamps_keep_at_least_milliseconds,
    user_insert_of_a_taken_username_in_any_case_is_a_conflict,
    user_insert_of_a_taken_id_is_a_conflict,
    user_list_excludes_the_caller_and_orders_by_lower_cased_username,
    user_list_pages_with_the_after_cursor_and_limit,
    user_list_search_matches_the_start_of_the_username_full_name_or_a_word_ignoring_case,
    user_list_search_pages_are_full_when_one_user_matches_many_times_or_is_the_caller,
    user_list_search_matches_wildcards_and_regex_metacharacters_literally,
    user_concurrent_inserts_of_one_username_let_exactly_one_win,
    conversation_find_or_insert_stores_the_candidate,
    conversation_find_or_insert_returns_the_existing_one_for_both_orders,
    conversation_find_by_participants_of_an_unknown_pair_is_none,
    conversation_find_or_insert_with_a_taken_id_for_another_pair_is_a_conflict,
    conversation_concurrent_find_or_insert_from_both_sides_yields_one_conversation,
    conversation_list_for_user_is_most_recent_first_with_the_last_message,
    conversation_list_for_user_without_conversations_is_empty,
    conversation_pages_for_user_walk_the_list_in_order_each_once,
    conversation_pages_for_user_stay_exact_while_messages_arrive,
    conversation_page_of_a_pair_without_a_conversation_is_none,
    conversation_page_is_the_conversation_with_what_list_by_conversation_returns,
    conversation_page_of_a_conversation_without_messages_has_no_messages,
    message_append_then_list_round_trips_every_field,
    message_append_stores_the_candidate_conversation_when_the_pair_has_none,
    message_append_joins_the_pairs_conversation_from_either_side,
    message_append_moves_updated_at_forward_never_back,
    message_append_of_a_taken_id_is_a_conflict_and_stores_nothing,
    message_list_pages_backwards_and_returns_each_page_oldest_first,
    message_list_edges,
    stream_positions_start_at_one_and_are_consecutive_per_user_across_both_roles,
    stream_reads_after_a_cursor_in_order_with_a_limit,
    stream_of_a_user_without_messages_is_empty_at_start,
    client_id_retry_returns_the_first_message_and_stores_nothing,
    client_id_of_another_sender_is_another_message,
    concurrent_appends_leave_every_stream_gap_free_and_complete,
    concurrent_retries_with_one_client_id_store_one_message,
    revoke_twice_is_fine_and_the_token_is_revoked,
    is_revoked_of_an_unknown_token_is_false,
    purge_expired_removes_and_counts_only_expired_revocations,
    active_lists_every_unexpired_revocation_once,
    health_ping_succeeds,
);

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Now, with millisecond precision.
fn now() -> Timestamp {
    at_millis(Utc::now().timestamp_millis())
}

fn at_millis(ms: i64) -> Timestamp {
    DateTime::from_timestamp_millis(ms).expect("a timestamp in range")
}

fn user_named(username: &str) -> User {
    user_with(username, "Test User")
}

fn user_with(username: &str, full_name: &str) -> User {
    let username = Username::parse(username).expect("a valid username");
    let at = now();
    User {
        id: UserId::generate(),
        avatar: Avatar::default_for(&username, Some(Gender::Female)),
        full_name: FullName::parse(full_name).expect("a valid full name"),
        username,
        gender: Some(Gender::Female),
        password_hash: PasswordHash::new("$2b$10$abcdefghijklmnopqrstuvCDEFGHIJKLMNOPQRSTUVWXYZ01234".into()),
        created_at: at,
        updated_at: at,
    }
}

async fn insert_user(storage: &Storage, username: &str) -> User {
    let user = user_named(username);
    storage.users.insert(&user).await.expect("inserting a user");
    user
}

fn pair(a: &User, b: &User) -> ParticipantPair {
    ParticipantPair::new(a.id.clone(), b.id.clone()).expect("two different users")
}

async fn conversation_between(storage: &Storage, a: &User, b: &User, at: Timestamp) -> Conversation {
    storage
        .conversations
        .find_or_insert(&Conversation::start(pair(a, b), at))
        .await
        .expect("creating a conversation")
}

/// A send as the messaging use case builds it: a new conversation for the pair, in case it
/// has none yet, and the message in it.
fn draft(from: &User, to: &User, body: &str, at: Timestamp) -> (Conversation, Message) {
    let conversation = Conversation::start(pair(from, to), at);
    let message = Message {
        id: MessageId::generate(),
        conversation_id: conversation.id.clone(),
        sender_id: from.id.clone(),
        receiver_id: to.id.clone(),
        body: MessageBody::parse(body).expect("a valid body"),
        created_at: at,
        client_id: None,
    };
    (conversation, message)
}

fn client_id(raw: &str) -> Option<ClientMessageId> {
    Some(ClientMessageId::parse(raw).expect("a valid client message id"))
}

fn created(appended: Appended) -> StoredMessage {
    match appended {
        Appended::Created(stored) => stored,
        Appended::Existing(earlier) => panic!("expected a new message, got the earlier {earlier:?}"),
    }
}

fn existing(appended: Appended) -> StoredMessage {
    match appended {
        Appended::Existing(earlier) => earlier,
        Appended::Created(stored) => panic!("expected the earlier message, a new one was stored: {stored:?}"),
    }
}

/// Appends a message from `from` to `to` at `at`; returns it as stored, with its cursors.
async fn send_at(storage: &Storage, from: &User, to: &User, body: &str, at: Timestamp) -> StoredMessage {
    let (conversation, message) = draft(from, to, body, at);
    created(storage.messages.append(&conversation, &message).await.expect("appending a message"))
}

/// Appends a message from `from` to `to`, now; returns it as stored.
async fn send(storage: &Storage, from: &User, to: &User, body: &str) -> Message {
    send_at(storage, from, to, body, now()).await.message
}

async fn history(storage: &Storage, a: &User, b: &User) -> Vec<Message> {
    let Some(conversation) = storage.conversations.find_by_participants(&pair(a, b)).await.unwrap() else {
        return Vec::new();
    };
    storage.messages.list_by_conversation(&conversation.id, None, 200).await.unwrap()
}

fn cursor(position: u64) -> Cursor {
    Cursor::new(position).expect("a valid position")
}

fn positions(items: &[StreamItem]) -> Vec<u64> {
    items.iter().map(|item| item.cursor.position()).collect()
}

/// The whole stream of `user`, read in pages of `page`.
async fn whole_stream(storage: &Storage, user: &User, page: u32) -> Vec<StreamItem> {
    let mut items: Vec<StreamItem> = Vec::new();
    loop {
        let after = items.last().map_or(Cursor::START, |item| item.cursor);
        let next = storage.messages.stream(&user.id, after, page).await.unwrap();
        if next.is_empty() {
            return items;
        }
        items.extend(next);
    }
}

fn query(exclude: &User) -> UserQuery {
    UserQuery { exclude: exclude.id.clone(), search: None, after_username: None, limit: 50 }
}

fn usernames(users: &[User]) -> Vec<&str> {
    users.iter().map(|u| u.username.as_str()).collect()
}

fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

// ---------------------------------------------------------------------------------------------
// Users

async fn user_insert_then_find_by_id_round_trips_every_field(storage: &Storage) {
    let mut user = user_with("Ada.Lovelace-1", "Ada Lovelace ✓");
    user.updated_at = user.created_at + Duration::milliseconds(1500);
    storage.users.insert(&user).await.unwrap();
    let mut genderless = user_named("nobody");
    genderless.gender = None;
    storage.users.insert(&genderless).await.unwrap();

    assert_eq!(storage.users.find_by_id(&user.id).await.unwrap(), Some(user));
    assert_eq!(storage.users.find_by_id(&genderless.id).await.unwrap(), Some(genderless));
}

async fn user_find_by_id_of_an_unknown_id_is_none(storage: &Storage) {
    insert_user(storage, "someone").await;
    assert_eq!(storage.users.find_by_id(&UserId::generate()).await.unwrap(), None);
}

/// Rules for new names and messages tightened (no invisible or bidi characters in names, a
/// visible character in every message); what was stored before must still read back.
async fn names_and_messages_stored_under_earlier_rules_stay_readable(storage: &Storage) {
    let mut earlier = user_named("earlier");
    earlier.full_name = FullName::stored("Ali\u{200F}ce").expect("valid under the earlier rules");
    assert!(FullName::parse("Ali\u{200F}ce").is_err(), "refused for new names");
    storage.users.insert(&earlier).await.unwrap();
    assert_eq!(storage.users.find_by_id(&earlier.id).await.unwrap(), Some(earlier.clone()));

    let other = insert_user(storage, "other").await;
    let (conversation, mut message) = draft(&earlier, &other, "placeholder", now());
    message.body = MessageBody::stored("\u{200B}").expect("valid under the earlier rules");
    created(storage.messages.append(&conversation, &message).await.unwrap());
    assert_eq!(history(storage, &earlier, &other).await, vec![message]);
}

async fn user_find_by_username_ignores_case(storage: &Storage) {
    let alice = insert_user(storage, "Alice").await;
    for spelling in ["Alice", "alice", "ALICE", "aLiCe"] {
        let found = storage.users.find_by_username(&Username::parse(spelling).unwrap()).await.unwrap();
        assert_eq!(found.as_ref(), Some(&alice), "{spelling}");
    }
    let nobody = storage.users.find_by_username(&Username::parse("alicia").unwrap()).await.unwrap();
    assert_eq!(nobody, None);
}

async fn user_timestamps_keep_at_least_milliseconds(storage: &Storage) {
    let mut user = user_named("precise");
    user.created_at = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap();
    user.updated_at = DateTime::from_timestamp_micros(1_700_000_001_999_999).unwrap();
    storage.users.insert(&user).await.unwrap();

    let found = storage.users.find_by_id(&user.id).await.unwrap().unwrap();
    assert_eq!(found.created_at.timestamp_millis(), user.created_at.timestamp_millis());
    assert_eq!(found.updated_at.timestamp_millis(), user.updated_at.timestamp_millis());
    // Whatever finer digits a backend keeps are exact, never rounded up into the next millisecond.
    assert!(found.created_at <= user.created_at && found.updated_at <= user.updated_at);
}

async fn user_insert_of_a_taken_username_in_any_case_is_a_conflict(storage: &Storage) {
    let first = insert_user(storage, "Carol").await;
    for spelling in ["Carol", "carol", "CAROL"] {
        let result = storage.users.insert(&user_named(spelling)).await;
        assert!(matches!(result, Err(RepoError::Conflict)), "{spelling}: {result:?}");
    }
    let found = storage.users.find_by_username(&first.username).await.unwrap();
    assert_eq!(found.map(|u| u.id), Some(first.id));
}

async fn user_insert_of_a_taken_id_is_a_conflict(storage: &Storage) {
    let first = insert_user(storage, "dave").await;
    let mut same_id = user_named("someone_else");
    same_id.id = first.id.clone();

    let result = storage.users.insert(&same_id).await;
    assert!(matches!(result, Err(RepoError::Conflict)), "{result:?}");
    assert_eq!(storage.users.find_by_id(&first.id).await.unwrap(), Some(first));
    assert_eq!(storage.users.find_by_username(&same_id.username).await.unwrap(), None);
}

async fn user_list_excludes_the_caller_and_orders_by_lower_cased_username(storage: &Storage) {
    let me = insert_user(storage, "alice").await;
    for name in ["charlie", "Bob", "dave", "Ant", "ZED", "b.c", "b-c", "b_c", "b00"] {
        insert_user(storage, name).await;
    }
    let listed = storage.users.list(&query(&me)).await.unwrap();
    // Byte order of the lower-cased names: '-' < '.' < '0' < '_' < letters.
    assert_eq!(usernames(&listed), ["Ant", "b-c", "b.c", "b00", "b_c", "Bob", "charlie", "dave", "ZED"]);
}

async fn user_list_pages_with_the_after_cursor_and_limit(storage: &Storage) {
    let me = insert_user(storage, "me_myself").await;
    for name in ["Echo", "alpha", "Delta", "charlie", "bravo"] {
        insert_user(storage, name).await;
    }
    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = storage
            .users
            .list(&UserQuery { after_username: after.clone(), limit: 2, ..query(&me) })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().map(|u| u.username.normalized());
        pages.push(usernames(&page).join(","));
    }
    assert_eq!(pages, ["alpha,bravo", "charlie,Delta", "Echo"]);

    let after_delta = UserQuery { after_username: Some("delta".into()), limit: 200, ..query(&me) };
    assert_eq!(usernames(&storage.users.list(&after_delta).await.unwrap()), ["Echo"]);
    let larger_than_count = UserQuery { limit: 200, ..query(&me) };
    assert_eq!(storage.users.list(&larger_than_count).await.unwrap().len(), 5);
    let nothing = UserQuery { limit: 0, ..query(&me) };
    assert_eq!(storage.users.list(&nothing).await.unwrap(), []);
}

async fn user_list_search_matches_the_start_of_the_username_full_name_or_a_word_ignoring_case(
    storage: &Storage,
) {
    let me = user_with("searcher", "Sam Searcher");
    storage.users.insert(&me).await.unwrap();
    for (username, full_name) in [
        ("MaryAnn", "Mary Ann Evans"),
        ("george", "George Eliot"),
        ("annie", "Annie Ernaux"),
        ("zoe", "Zoë Ännchen"),
        ("bob", "Robert Brown"),
        ("joanna", "Jo Bloggs"),
    ] {
        storage.users.insert(&user_with(username, full_name)).await.unwrap();
    }
    let search = |text: &str| UserQuery { search: Some(SearchPrefix::new(text)), ..query(&me) };
    let cases: [(&str, &[&str]); 11] = [
        // A word of the full name ("Ann"), and the start of a username ("annie").
        ("ANN", &["annie", "MaryAnn"]),
        ("eliot", &["george"]),
        ("ÄNNCHEN", &["zoe"]),
        ("zoë ä", &["zoe"]),
        ("mary ann e", &["MaryAnn"]),
        // Inside a word or a username is no match: "joanna" holds "ann", "Robert" holds "ber".
        ("nna", &[]),
        ("ber", &[]),
        ("ann evans", &[]),
        ("jo", &["joanna"]),
        ("b", &["bob", "joanna"]),
        ("sam", &[]),
    ];
    for (text, expected) in cases {
        let found = storage.users.list(&search(text)).await.unwrap();
        assert_eq!(usernames(&found), expected, "search {text:?} (the caller is never listed)");
    }
    let found = storage
        .users
        .list(&UserQuery { limit: 1, after_username: Some("annie".into()), ..search("ann") })
        .await
        .unwrap();
    assert_eq!(usernames(&found), ["MaryAnn"]);
    let found = storage.users.list(&UserQuery { limit: 1, ..search("b") }).await.unwrap();
    assert_eq!(usernames(&found), ["bob"]);
}

async fn user_list_search_pages_are_full_when_one_user_matches_many_times_or_is_the_caller(
    storage: &Storage,
) {
    // Matches by name words only; "aaa" matches with four of them, the caller sorts between.
    let me = user_with("aab", "Quill Quo");
    storage.users.insert(&me).await.unwrap();
    for (username, full_name) in [("aaa", "Quo Quoll Quokka"), ("aac", "Quo X"), ("aad", "Y Quorum")] {
        storage.users.insert(&user_with(username, full_name)).await.unwrap();
    }
    let search = UserQuery { search: Some(SearchPrefix::new("qu")), limit: 2, ..query(&me) };
    let first = storage.users.list(&search).await.unwrap();
    assert_eq!(usernames(&first), ["aaa", "aac"], "a full page: a user once, the caller never");
    let next = UserQuery { after_username: Some("aac".into()), ..search };
    assert_eq!(usernames(&storage.users.list(&next).await.unwrap()), ["aad"]);
}

async fn user_list_search_matches_wildcards_and_regex_metacharacters_literally(storage: &Storage) {
    let me = insert_user(storage, "searcher").await;
    let people = [
        ("a_b", "Plain One"),
        ("axb", "Plain Two"),
        ("a.c", "Plain Three"),
        ("abc", "Plain Four"),
        ("pct", "Hundred %Sure"),
        ("paren", "Name (x)"),
        ("bracket", "Name [y]"),
        ("plus", "A+B"),
        ("star", "Star*"),
        ("anchors", "^$"),
        ("pipe", "x|y"),
        ("slash", "back\\slash"),
        ("brace", "a{2}"),
        ("qmark", "why?"),
        ("maxchar", "\u{10ffff}\u{10ffff}x"),
    ];
    for (username, full_name) in people {
        storage.users.insert(&user_with(username, full_name)).await.unwrap();
    }
    let search = |text: &str| UserQuery { search: Some(SearchPrefix::new(text)), ..query(&me) };
    let cases: [(&str, &[&str]); 19] = [
        ("_", &[]),
        ("a_", &["a_b"]),
        ("%", &["pct"]),
        ("%s", &["pct"]),
        ("hundred %", &["pct"]),
        ("a.", &["a.c"]),
        ("a.c", &["a.c"]),
        ("(x)", &["paren"]),
        ("[y]", &["bracket"]),
        ("a+b", &["plus"]),
        ("star*", &["star"]),
        ("^", &["anchors"]),
        ("^$", &["anchors"]),
        ("x|", &["pipe"]),
        ("back\\", &["slash"]),
        ("a{", &["brace"]),
        ("why?", &["qmark"]),
        (".*", &[]),
        // A prefix with no upper bound in code point order.
        ("\u{10ffff}", &["maxchar"]),
    ];
    for (text, expected) in cases {
        let found = storage.users.list(&search(text)).await.unwrap();
        assert_eq!(usernames(&found), expected, "search {text:?}");
    }
}

async fn user_concurrent_inserts_of_one_username_let_exactly_one_win(storage: &Storage) {
    let users = storage.users.clone();
    let spellings = ["racer", "Racer", "RACER", "rAcEr"];
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let users = users.clone();
            let user = user_named(spellings[i % spellings.len()]);
            tokio::spawn(async move { users.insert(&user).await.map(|()| user.id) })
        })
        .collect();
    let mut winners = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(id) => winners.push(id),
            Err(RepoError::Conflict) => conflicts += 1,
            Err(other) => panic!("an insert failed otherwise than with a conflict: {other:?}"),
        }
    }
    assert_eq!((winners.len(), conflicts), (1, 19));
    let stored = users.find_by_username(&Username::parse("racer").unwrap()).await.unwrap();
    assert_eq!(stored.map(|u| u.id), winners.pop());
}

// ---------------------------------------------------------------------------------------------
// Conversations

async fn conversation_find_or_insert_stores_the_candidate(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let candidate = Conversation::start(pair(&a, &b), now());

    let stored = storage.conversations.find_or_insert(&candidate).await.unwrap();
    assert_eq!(stored, candidate);
    let found = storage.conversations.find_by_participants(&pair(&b, &a)).await.unwrap();
    assert_eq!(found, Some(candidate));
}

async fn conversation_find_or_insert_returns_the_existing_one_for_both_orders(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let first = conversation_between(storage, &a, &b, at_millis(1_700_000_000_000)).await;

    for (x, y) in [(&a, &b), (&b, &a)] {
        let later = Conversation::start(pair(x, y), at_millis(1_700_000_500_000));
        let got = storage.conversations.find_or_insert(&later).await.unwrap();
        assert_eq!(got, first);
    }
    assert_eq!(storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap(), Some(first.clone()));
    assert_eq!(storage.conversations.list_for_user(&a.id).await.unwrap().len(), 1);
}

async fn conversation_find_by_participants_of_an_unknown_pair_is_none(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    conversation_between(storage, &a, &b, now()).await;
    assert_eq!(storage.conversations.find_by_participants(&pair(&a, &c)).await.unwrap(), None);
}

async fn conversation_find_or_insert_with_a_taken_id_for_another_pair_is_a_conflict(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let first = conversation_between(storage, &a, &b, now()).await;
    let mut clash = Conversation::start(pair(&a, &c), now());
    clash.id = first.id.clone();

    let result = storage.conversations.find_or_insert(&clash).await;
    assert!(matches!(result, Err(RepoError::Conflict)), "{result:?}");
    assert_eq!(storage.conversations.find_by_participants(&pair(&a, &c)).await.unwrap(), None);
}

async fn conversation_concurrent_find_or_insert_from_both_sides_yields_one_conversation(storage: &Storage) {
    for round in 0..10 {
        let a = insert_user(storage, &format!("left{round}")).await;
        let b = insert_user(storage, &format!("right{round}")).await;
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let conversations = storage.conversations.clone();
                let (from, to) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
                let candidate = Conversation::start(pair(from, to), now());
                tokio::spawn(async move { conversations.find_or_insert(&candidate).await })
            })
            .collect();
        let mut ids = HashSet::new();
        for task in tasks {
            let conversation = task.await.unwrap().expect("find_or_insert never fails on a race");
            ids.insert(conversation.id);
        }
        assert_eq!(ids.len(), 1, "round {round}: {ids:?}");
        let stored = storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().unwrap();
        assert!(ids.contains(&stored.id));
        assert_eq!(storage.conversations.list_for_user(&a.id).await.unwrap().len(), 1);
    }
}

async fn conversation_list_for_user_is_most_recent_first_with_the_last_message(storage: &Storage) {
    let me = insert_user(storage, "me_myself").await;
    let [b, c, d, e] = [
        insert_user(storage, "bea").await,
        insert_user(storage, "cyd").await,
        insert_user(storage, "dee").await,
        insert_user(storage, "eve").await,
    ];
    let t0 = at_millis(1_700_000_000_000);
    let with_b = conversation_between(storage, &me, &b, t0).await;
    let with_c = conversation_between(storage, &c, &me, t0).await;
    let with_d = conversation_between(storage, &me, &d, t0).await;
    let with_e = conversation_between(storage, &e, &me, t0).await;
    let not_mine = conversation_between(storage, &b, &c, t0).await;

    send_at(storage, &me, &b, "b1", t0 + Duration::seconds(10)).await;
    let last_b = send_at(storage, &b, &me, "b2", t0 + Duration::seconds(20)).await.message;
    let last_c = send_at(storage, &c, &me, "c1", t0 + Duration::seconds(30)).await.message;
    send_at(storage, &b, &c, "elsewhere", t0 + Duration::seconds(40)).await;
    // `with_d` and `with_e` tie on updatedAt: the greater id comes first.
    // `with_f` and `with_g` tie on updatedAt too (two messages in one millisecond): the
    // one with the later message comes first, though its conversation is the older.
    let (f, g) = (insert_user(storage, "fay").await, insert_user(storage, "gus").await);
    let with_f = conversation_between(storage, &me, &f, t0).await;
    let with_g = conversation_between(storage, &me, &g, t0).await;
    let same_millisecond = t0 + Duration::seconds(50);
    send_at(storage, &g, &me, "g1", same_millisecond).await;
    send_at(storage, &f, &me, "f1", same_millisecond).await;

    let listed = storage.conversations.list_for_user(&me.id).await.unwrap();
    let mut tied = [with_d.id.clone(), with_e.id.clone()];
    tied.sort_by(|x, y| y.cmp(x));
    let expected_ids =
        [vec![with_f.id.clone(), with_g.id.clone(), with_c.id.clone(), with_b.id.clone()], tied.to_vec()]
            .concat();
    assert_eq!(listed.iter().map(|s| s.conversation.id.clone()).collect::<Vec<_>>(), expected_ids);
    let listed = &listed[2..];

    assert_eq!(
        listed[0],
        ConversationSummary {
            conversation: Conversation { updated_at: t0 + Duration::seconds(30), ..with_c.clone() },
            last_message: Some(last_c),
        }
    );
    assert_eq!(listed[1].last_message, Some(last_b));
    assert_eq!(listed[1].conversation.updated_at, t0 + Duration::seconds(20));
    assert_eq!((&listed[2].last_message, &listed[3].last_message), (&None, &None));

    let theirs = storage.conversations.list_for_user(&c.id).await.unwrap();
    let ids: Vec<_> = theirs.iter().map(|s| s.conversation.id.clone()).collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&with_c.id) && ids.contains(&not_mine.id));
    let elsewhere = theirs.iter().find(|s| s.conversation.id == not_mine.id).unwrap();
    assert_eq!(elsewhere.last_message.as_ref().map(|m| m.body.as_str()), Some("elsewhere"));
    assert_eq!(elsewhere.conversation.updated_at, t0 + Duration::seconds(40));
}

async fn conversation_list_for_user_without_conversations_is_empty(storage: &Storage) {
    let (a, b, loner) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "loner").await,
    );
    conversation_between(storage, &a, &b, now()).await;
    assert_eq!(storage.conversations.list_for_user(&loner.id).await.unwrap(), []);
    assert_eq!(storage.conversations.list_for_user(&UserId::generate()).await.unwrap(), []);
}

/// Every conversation of `user`, read with `page_for_user` in pages of `page`, following the
/// last key of each page; fails if the walk does not end.
async fn walk_conversations(storage: &Storage, user: &User, page: u32) -> Vec<ConversationSummary> {
    let mut all: Vec<ConversationSummary> = Vec::new();
    for _ in 0..1000 {
        let after = all.last().map(ConversationSummary::key);
        let next = storage.conversations.page_for_user(&user.id, after, page).await.unwrap();
        assert!(next.len() <= page as usize);
        let done = next.len() < page as usize;
        all.extend(next);
        if done {
            return all;
        }
    }
    panic!("the walk does not end");
}

fn conversation_ids(list: &[ConversationSummary]) -> Vec<ConversationId> {
    list.iter().map(|s| s.conversation.id.clone()).collect()
}

async fn conversation_pages_for_user_walk_the_list_in_order_each_once(storage: &Storage) {
    let t0 = at_millis(1_700_000_000_000);
    // Twelve partners: four conversations without messages (tied on updatedAt), and
    // messages in pairs of one millisecond, so that every tie-break is crossed by a page edge.
    // Ids are time-ordered: half the partners sort before me (I am the pair's second), half
    // after (I am its first), mixed across the ties.
    let mut partners = Vec::new();
    for i in 0..6 {
        partners.push(insert_user(storage, &format!("partner{i:02}")).await);
    }
    let me = insert_user(storage, "me_myself").await;
    for i in 6..12 {
        partners.push(insert_user(storage, &format!("partner{i:02}")).await);
    }
    partners.swap(1, 7);
    partners.swap(4, 10);
    for partner in &partners[..4] {
        conversation_between(storage, &me, partner, t0).await;
    }
    for (i, partner) in partners[4..].iter().enumerate() {
        let at = t0 + Duration::seconds(1 + i as i64 / 2);
        if i % 3 == 0 {
            send_at(storage, partner, &me, "hi", at).await;
        } else {
            send_at(storage, &me, partner, "hi", at).await;
        }
    }
    let bystander = insert_user(storage, "bystander").await;
    send_at(storage, &bystander, &partners[0], "not yours", t0 + Duration::seconds(99)).await;

    let whole = storage.conversations.page_for_user(&me.id, None, 200).await.unwrap();
    assert_eq!(whole.len(), 12);
    let keys: Vec<ConversationKey> = whole.iter().map(ConversationSummary::key).collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "strictly descending keys: {keys:#?}");
    assert!(
        whole[..8].iter().all(|s| s.last_message.is_some())
            && whole[8..].iter().all(|s| s.last_message.is_none())
    );
    assert_eq!(storage.conversations.list_for_user(&me.id).await.unwrap(), whole);
    for page in [1, 2, 3, 5, 11, 12, 13] {
        assert_eq!(
            conversation_ids(&walk_conversations(storage, &me, page).await),
            conversation_ids(&whole),
            "pages of {page}"
        );
    }
    let after_last = storage.conversations.page_for_user(&me.id, keys.last().cloned(), 5).await.unwrap();
    assert_eq!(after_last, []);
    // A key that is no conversation's still says where to go on: below it in key order.
    let between = ConversationKey { id: ConversationId::generate(), ..keys[3].clone() };
    let expected_after = if between < keys[3] { &whole[4..] } else { &whole[3..] };
    let after_between = storage.conversations.page_for_user(&me.id, Some(between), 200).await.unwrap();
    assert_eq!(conversation_ids(&after_between), conversation_ids(expected_after));
}

async fn conversation_pages_for_user_stay_exact_while_messages_arrive(storage: &Storage) {
    let me = insert_user(storage, "me_myself").await;
    let t0 = at_millis(1_700_000_000_000);
    let mut partners = Vec::new();
    for i in 0..6 {
        let partner = insert_user(storage, &format!("partner{i}")).await;
        send_at(storage, &partner, &me, "hi", t0 + Duration::seconds(i)).await;
        partners.push(partner);
    }
    // Newest first: partner5, partner4, ..., partner0.
    let first = storage.conversations.page_for_user(&me.id, None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|s| s.last_message.as_ref().unwrap().sender_id.clone()).collect::<Vec<_>>(),
        [partners[5].id.clone(), partners[4].id.clone()]
    );
    // Both a conversation already listed and one not reached yet get a message.
    send_at(storage, &me, &partners[5], "again", t0 + Duration::seconds(60)).await;
    send_at(storage, &partners[1], &me, "again", t0 + Duration::seconds(61)).await;
    let mut walked = first.clone();
    loop {
        let next = storage
            .conversations
            .page_for_user(&me.id, walked.last().map(ConversationSummary::key), 2)
            .await
            .unwrap();
        if next.is_empty() {
            break;
        }
        walked.extend(next);
    }
    let senders: Vec<UserId> =
        walked.iter().map(|s| s.last_message.as_ref().unwrap().sender_id.clone()).collect();
    // Nothing twice; the one that moved to the front after the walk passed its place is
    // skipped, everything else is there in order.
    assert_eq!(
        senders,
        [&partners[5], &partners[4], &partners[3], &partners[2], &partners[0]].map(|p| p.id.clone())
    );
    let now_first = storage.conversations.page_for_user(&me.id, None, 2).await.unwrap();
    assert_eq!(now_first[0].last_message.as_ref().unwrap().sender_id, partners[1].id);
    assert_eq!(now_first[1].last_message.as_ref().unwrap().body.as_str(), "again");
}

async fn conversation_page_of_a_pair_without_a_conversation_is_none(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let sent = send(storage, &a, &b, "hi").await;
    let strangers = ParticipantPair::new(UserId::generate(), UserId::generate()).unwrap();
    for pair in [pair(&a, &c), pair(&c, &b), strangers] {
        for (before, limit) in [(None, 50), (None, 1), (None, 0), (Some(sent.id.clone()), 50)] {
            let page = storage.conversations.page(&pair, before.clone(), limit).await.unwrap();
            assert_eq!(page, None, "before {before:?}, limit {limit}");
        }
    }
}

async fn conversation_page_is_the_conversation_with_what_list_by_conversation_returns(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let t0 = at_millis(1_700_000_000_000);
    let mut sent = Vec::new();
    for i in 1..=5 {
        let (from, to) = if i % 2 == 0 { (&b, &a) } else { (&a, &b) };
        sent.push(send_at(storage, from, to, &format!("m{i}"), t0 + Duration::seconds(i)).await.message);
        // Messages of the participants' other conversations stay out of the pair's pages.
        send_at(storage, &c, &a, &format!("other{i}"), t0 + Duration::seconds(i)).await;
        send_at(storage, &b, &c, &format!("else{i}"), t0 + Duration::seconds(i)).await;
    }
    let conversation = storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().unwrap();
    // The pair from the other side: it names the same conversation.
    let page = |before: Option<MessageId>, limit: u32| {
        let pair = pair(&b, &a);
        async move { storage.conversations.page(&pair, before, limit).await.unwrap() }
    };

    let mut befores: Vec<Option<MessageId>> = vec![None, Some(MessageId::generate())];
    befores.extend(sent.iter().map(|m| Some(m.id.clone())));
    for before in befores {
        for limit in [0, 1, 2, 3, 5, 50] {
            let listed =
                storage.messages.list_by_conversation(&conversation.id, before.clone(), limit).await.unwrap();
            assert_eq!(
                page(before.clone(), limit).await,
                Some(ConversationPage { conversation: conversation.clone(), messages: listed }),
                "before {before:?}, limit {limit}"
            );
        }
    }

    // The same pages, spelled out.
    let whole = page(None, 50).await.unwrap();
    assert_eq!(
        whole.conversation,
        Conversation { updated_at: t0 + Duration::seconds(5), ..conversation.clone() }
    );
    assert_eq!(whole.messages, sent);
    assert_eq!(page(None, 1).await.unwrap().messages, &sent[4..]);
    assert_eq!(bodies(&page(Some(sent[3].id.clone()), 2).await.unwrap().messages), ["m2", "m3"]);
    assert_eq!(page(Some(sent[1].id.clone()), 1).await.unwrap().messages, &sent[..1]);
    assert_eq!(page(Some(sent[1].id.clone()), 50).await.unwrap().messages, &sent[..1]);
    assert_eq!(
        page(Some(sent[0].id.clone()), 50).await,
        Some(ConversationPage { conversation: conversation.clone(), messages: Vec::new() }),
        "before the oldest message"
    );
    assert_eq!(page(None, 0).await.map(|p| p.messages), Some(Vec::new()), "a limit of zero");
}

async fn conversation_page_of_a_conversation_without_messages_has_no_messages(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let conversation = conversation_between(storage, &a, &b, now()).await;
    let empty = Some(ConversationPage { conversation, messages: Vec::new() });
    for (before, limit) in [(None, 50), (None, 1), (Some(MessageId::generate()), 50)] {
        let page = storage.conversations.page(&pair(&a, &b), before.clone(), limit).await.unwrap();
        assert_eq!(page, empty, "before {before:?}, limit {limit}");
    }
}

// ---------------------------------------------------------------------------------------------
// Messages

async fn message_append_then_list_round_trips_every_field(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let conversation = conversation_between(storage, &a, &b, now()).await;
    let (candidate, mut message) =
        draft(&a, &b, "  <b>hi</b> & \"bye\" \u{1F600}\n", at_millis(1_700_000_000_007));
    message.conversation_id = conversation.id.clone();
    message.client_id = client_id("0b7e6d3c-5f0e-4d53-9f4e-3d2c1b0a9e8f");
    let without_key = Message { id: MessageId::generate(), client_id: None, ..message.clone() };

    let stored = created(storage.messages.append(&candidate, &message).await.unwrap());
    assert_eq!(
        stored,
        StoredMessage { message: message.clone(), sender_cursor: cursor(1), receiver_cursor: cursor(1) }
    );
    created(storage.messages.append(&candidate, &without_key).await.unwrap());

    let listed = storage.messages.list_by_conversation(&conversation.id, None, 50).await.unwrap();
    assert_eq!(listed, [message.clone(), without_key.clone()]);
    let summary = storage.conversations.list_for_user(&b.id).await.unwrap();
    assert_eq!(summary[0].last_message.as_ref(), Some(&without_key));
    let streamed = storage.messages.stream(&b.id, Cursor::START, 50).await.unwrap();
    assert_eq!(
        streamed,
        [
            StreamItem { cursor: cursor(1), message: message.clone() },
            StreamItem { cursor: cursor(2), message: without_key },
        ]
    );
}

async fn message_append_stores_the_candidate_conversation_when_the_pair_has_none(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let at = at_millis(1_700_000_000_000);
    let (candidate, message) = draft(&a, &b, "hello", at);

    let stored = created(storage.messages.append(&candidate, &message).await.unwrap());
    assert_eq!(stored.message, message);
    assert_eq!(
        storage.conversations.find_by_participants(&pair(&b, &a)).await.unwrap(),
        Some(candidate.clone())
    );
    assert_eq!(storage.messages.list_by_conversation(&candidate.id, None, 50).await.unwrap(), [message]);
    assert_eq!(storage.conversations.list_for_user(&a.id).await.unwrap().len(), 1);
}

async fn message_append_joins_the_pairs_conversation_from_either_side(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let first = send(storage, &a, &b, "first").await;
    let conversation = storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().unwrap();
    assert_eq!(first.conversation_id, conversation.id);

    let mut sent = vec![first];
    for (from, to, body) in [(&b, &a, "reply"), (&a, &b, "again")] {
        let (candidate, message) = draft(from, to, body, now());
        assert_ne!(candidate.id, conversation.id);
        let stored = created(storage.messages.append(&candidate, &message).await.unwrap());
        assert_eq!(stored.message, Message { conversation_id: conversation.id.clone(), ..message });
        assert_eq!(
            storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().map(|c| c.id),
            Some(conversation.id.clone()),
            "the candidate is not stored"
        );
        sent.push(stored.message);
    }
    assert_eq!(storage.messages.list_by_conversation(&conversation.id, None, 50).await.unwrap(), sent);
    assert_eq!(storage.conversations.list_for_user(&b.id).await.unwrap().len(), 1);
}

async fn message_append_moves_updated_at_forward_never_back(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let start = at_millis(1_700_000_000_000);
    let conversation = conversation_between(storage, &a, &b, start).await;
    let updated_at = || async {
        storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().unwrap().updated_at
    };

    let later = start + Duration::seconds(30);
    send_at(storage, &a, &b, "later", later).await;
    assert_eq!(updated_at().await, later);

    let earlier = send_at(storage, &b, &a, "earlier", start + Duration::seconds(10)).await;
    assert_eq!(updated_at().await, later, "an earlier message leaves updatedAt alone");
    assert_eq!(earlier.message.conversation_id, conversation.id, "but joins the conversation");
    send_at(storage, &a, &b, "same time", later).await;
    assert_eq!(updated_at().await, later);

    let latest = later + Duration::milliseconds(1);
    send_at(storage, &b, &a, "latest", latest).await;
    let stored = storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().unwrap();
    assert_eq!(stored, Conversation { updated_at: latest, ..conversation });
}

async fn message_append_of_a_taken_id_is_a_conflict_and_stores_nothing(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let first = send(storage, &a, &b, "first").await;
    let heads = || async {
        let mut heads = Vec::new();
        for user in [&a, &b, &c] {
            heads.push(storage.messages.stream_head(&user.id).await.unwrap());
        }
        heads
    };
    let before = heads().await;

    for (from, to) in [(&b, &a), (&a, &c)] {
        let (candidate, mut again) = draft(from, to, "second", now());
        again.id = first.id.clone();
        again.client_id = client_id("fresh-key");
        let result = storage.messages.append(&candidate, &again).await;
        assert!(matches!(result, Err(RepoError::Conflict)), "{result:?}");
    }
    assert_eq!(history(storage, &a, &b).await, [first]);
    assert_eq!(history(storage, &a, &c).await, [], "no message, and no conversation either");
    assert_eq!(storage.conversations.find_by_participants(&pair(&a, &c)).await.unwrap(), None);
    assert_eq!(heads().await, before, "no stream position was taken");
    let (candidate, mut retry) = draft(&a, &c, "second", now());
    retry.client_id = client_id("fresh-key");
    created(storage.messages.append(&candidate, &retry).await.expect("the client id was not used up"));
}

async fn message_list_pages_backwards_and_returns_each_page_oldest_first(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let conversation = conversation_between(storage, &a, &b, now()).await;
    let mut sent = Vec::new();
    for i in 1..=5 {
        let (from, to) = if i % 2 == 0 { (&b, &a) } else { (&a, &b) };
        sent.push(send(storage, from, to, &format!("m{i}")).await);
        send(storage, &c, &a, &format!("other{i}")).await;
    }
    let page = |before: Option<&Message>, limit: u32| {
        let before = before.map(|m| m.id.clone());
        let id = conversation.id.clone();
        async move { storage.messages.list_by_conversation(&id, before, limit).await.unwrap() }
    };

    assert_eq!(bodies(&page(None, 2).await), ["m4", "m5"]);
    assert_eq!(bodies(&page(Some(&sent[3]), 2).await), ["m2", "m3"]);
    assert_eq!(bodies(&page(Some(&sent[1]), 2).await), ["m1"]);
    assert_eq!(bodies(&page(Some(&sent[4]), 50).await), ["m1", "m2", "m3", "m4"]);
    assert_eq!(page(None, 50).await, sent);
}

async fn message_list_edges(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let conversation = conversation_between(storage, &a, &b, now()).await;
    let list = |before: Option<MessageId>, limit: u32| {
        let id = conversation.id.clone();
        async move { storage.messages.list_by_conversation(&id, before, limit).await.unwrap() }
    };

    assert_eq!(list(None, 50).await, [], "a conversation without messages");
    assert_eq!(list(None, 50).await, []);
    let unknown = ConversationId::generate();
    assert_eq!(storage.messages.list_by_conversation(&unknown, None, 50).await.unwrap(), []);

    let first = send(storage, &a, &b, "first").await;
    let second = send(storage, &b, &a, "second").await;
    assert_eq!(list(Some(first.id.clone()), 50).await, [], "before the first message");
    assert_eq!(list(None, 200).await, [first.clone(), second.clone()], "limit larger than count");
    assert_eq!(list(None, 1).await, std::slice::from_ref(&second));
    assert_eq!(list(None, 0).await, [], "a limit of zero");
    // A cursor that names no stored message still pages by id order.
    assert_eq!(list(Some(MessageId::generate()), 50).await, [first, second]);
}

// ---------------------------------------------------------------------------------------------
// Streams and idempotent sends

async fn stream_positions_start_at_one_and_are_consecutive_per_user_across_both_roles(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    // (from, to, expected sender cursor, expected receiver cursor)
    let sends = [
        (&a, &b, 1, 1),
        (&b, &a, 2, 2),
        (&a, &c, 3, 1),
        (&c, &b, 2, 3),
        (&b, &c, 4, 3),
        (&a, &b, 4, 5),
        (&c, &a, 4, 5),
    ];
    let mut stored = Vec::new();
    for (i, (from, to, sender_position, receiver_position)) in sends.into_iter().enumerate() {
        let message = send_at(storage, from, to, &format!("m{i}"), now()).await;
        assert_eq!(
            (message.sender_cursor, message.receiver_cursor),
            (cursor(sender_position), cursor(receiver_position)),
            "send {i}"
        );
        assert_eq!(message.cursor_for(&from.id), Some(cursor(sender_position)));
        stored.push(message);
    }

    for (user, expected) in [
        (&a, ["m0", "m1", "m2", "m5", "m6"].as_slice()),
        (&b, &["m0", "m1", "m3", "m4", "m5"]),
        (&c, &["m2", "m3", "m4", "m6"]),
    ] {
        let stream = storage.messages.stream(&user.id, Cursor::START, 50).await.unwrap();
        assert_eq!(
            positions(&stream),
            (1..=expected.len() as u64).collect::<Vec<_>>(),
            "{}",
            user.username.as_str()
        );
        let messages: Vec<Message> = stream.iter().map(|item| item.message.clone()).collect();
        assert_eq!(bodies(&messages), expected, "{}", user.username.as_str());
        for item in &stream {
            let original = stored.iter().find(|s| s.message.id == item.message.id).unwrap();
            assert_eq!(item.message, original.message);
            assert_eq!(original.cursor_for(&user.id), Some(item.cursor));
        }
        assert_eq!(storage.messages.stream_head(&user.id).await.unwrap(), cursor(expected.len() as u64));
    }
}

async fn stream_reads_after_a_cursor_in_order_with_a_limit(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let mut mine = Vec::new();
    for i in 1..=9 {
        let message = match i % 3 {
            0 => send(storage, &a, &b, &format!("m{i}")).await,
            1 => send(storage, &b, &a, &format!("m{i}")).await,
            _ => send(storage, &c, &a, &format!("m{i}")).await,
        };
        mine.push(message);
        send(storage, &b, &c, &format!("not mine {i}")).await;
    }
    let read = |after: u64, limit: u32| {
        let id = a.id.clone();
        async move { storage.messages.stream(&id, cursor(after), limit).await.unwrap() }
    };
    let messages = |items: Vec<StreamItem>| items.into_iter().map(|item| item.message).collect::<Vec<_>>();

    assert_eq!(messages(read(0, 50).await), mine);
    assert_eq!(positions(&read(0, 4).await), [1, 2, 3, 4]);
    assert_eq!(positions(&read(4, 4).await), [5, 6, 7, 8]);
    assert_eq!(positions(&read(8, 4).await), [9]);
    assert_eq!(messages(read(2, 3).await), &mine[2..5]);
    assert_eq!(read(9, 50).await, []);
    assert_eq!(read(100, 50).await, [], "after a position beyond the head");
    assert_eq!(read(0, 0).await, [], "a limit of zero");
    assert_eq!(whole_stream(storage, &a, 2).await.len(), 9);
    assert_eq!(storage.messages.stream_head(&a.id).await.unwrap(), cursor(9));
    assert_eq!(storage.messages.stream_head(&b.id).await.unwrap(), cursor(15));
    assert_eq!(storage.messages.stream_head(&c.id).await.unwrap(), cursor(12));
}

async fn stream_of_a_user_without_messages_is_empty_at_start(storage: &Storage) {
    let (a, b, loner) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "loner").await,
    );
    send(storage, &a, &b, "hi").await;
    for user in [&loner.id, &UserId::generate()] {
        assert_eq!(storage.messages.stream(user, Cursor::START, 50).await.unwrap(), []);
        assert_eq!(storage.messages.stream_head(user).await.unwrap(), Cursor::START);
    }
}

async fn client_id_retry_returns_the_first_message_and_stores_nothing(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    send(storage, &b, &a, "before").await;
    let (candidate, mut message) = draft(&a, &b, "once", now());
    message.client_id = client_id("key-1");
    let first = created(storage.messages.append(&candidate, &message).await.unwrap());
    assert_eq!((first.sender_cursor, first.receiver_cursor), (cursor(2), cursor(2)));
    let heads = || async {
        (
            storage.messages.stream_head(&a.id).await.unwrap(),
            storage.messages.stream_head(&b.id).await.unwrap(),
            storage.messages.stream_head(&c.id).await.unwrap(),
        )
    };
    let heads_before = heads().await;

    // The same send again (a new id, as a retrying client's server generates), then the same
    // key with other content and to someone else: the sender's key names the first message.
    let (retry_candidate, mut retry) = draft(&a, &b, "once", now() + Duration::seconds(1));
    retry.client_id = client_id("key-1");
    let (_, mut other_text) = draft(&a, &b, "something else", now());
    other_text.client_id = client_id("key-1");
    let (other_candidate, mut other_receiver) = draft(&a, &c, "once", now());
    other_receiver.client_id = client_id("key-1");
    for (candidate, attempt) in
        [(&retry_candidate, &retry), (&retry_candidate, &other_text), (&other_candidate, &other_receiver)]
    {
        let earlier = existing(storage.messages.append(candidate, attempt).await.unwrap());
        assert_eq!(earlier, first, "{}", attempt.body.as_str());
    }

    assert_eq!(heads().await, heads_before, "no position was taken");
    assert_eq!(bodies(&history(storage, &a, &b).await), ["before", "once"]);
    assert_eq!(storage.conversations.find_by_participants(&pair(&a, &c)).await.unwrap(), None);
    let conversation = storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().unwrap();
    assert_eq!(conversation.updated_at, first.message.created_at, "the retry's later date is not applied");
    assert_eq!(positions(&storage.messages.stream(&a.id, Cursor::START, 50).await.unwrap()), [1, 2]);
}

async fn client_id_of_another_sender_is_another_message(storage: &Storage) {
    let (a, b, c) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let mut ids = HashSet::new();
    for (from, to) in [(&a, &b), (&b, &a), (&c, &b)] {
        let (candidate, mut message) = draft(from, to, "same key", now());
        message.client_id = client_id("shared-key");
        let stored = created(storage.messages.append(&candidate, &message).await.unwrap());
        assert_eq!(stored.message.client_id, client_id("shared-key"));
        ids.insert(stored.message.id);
    }
    assert_eq!(ids.len(), 3);
    assert_eq!(history(storage, &a, &b).await.len(), 2);
    assert_eq!(storage.messages.stream_head(&b.id).await.unwrap(), cursor(3));
    // Each sender's key still names their own message.
    let (candidate, mut retry) = draft(&b, &a, "same key", now());
    retry.client_id = client_id("shared-key");
    let earlier = existing(storage.messages.append(&candidate, &retry).await.unwrap());
    assert_eq!((earlier.message.sender_id, earlier.message.receiver_id), (b.id.clone(), a.id.clone()));
}

/// How long the concurrency behaviours may take on any backend before they count as stuck.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

async fn concurrent_appends_leave_every_stream_gap_free_and_complete(storage: &Storage) {
    const WRITERS: usize = 8;
    const SENDS: usize = 25;
    let hub = insert_user(storage, "hub").await;
    let mut senders = Vec::new();
    for i in 0..WRITERS {
        senders.push(insert_user(storage, &format!("writer{i}")).await);
    }
    // Writer i mostly writes to the hub; every 5th send goes to the next writer instead, and
    // every 7th comes from the hub to writer i, so that streams grow in both roles at once.
    let plan = |i: usize, j: usize| -> (User, User) {
        if j % 5 == 4 {
            (senders[i].clone(), senders[(i + 1) % WRITERS].clone())
        } else if j % 7 == 3 {
            (hub.clone(), senders[i].clone())
        } else {
            (senders[i].clone(), hub.clone())
        }
    };
    let hub_total = (0..WRITERS)
        .flat_map(|i| (0..SENDS).map(move |j| (i, j)))
        .filter(|&(i, j)| {
            let (from, to) = plan(i, j);
            from.id == hub.id || to.id == hub.id
        })
        .count();

    // A reader follows the hub's stream while the writers run, always after the last
    // position it saw, as a syncing client does.
    let messages = Arc::clone(&storage.messages);
    let hub_id = hub.id.clone();
    let reader = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut seen: Vec<StreamItem> = Vec::new();
        while seen.len() < hub_total {
            assert!(started.elapsed() < PATIENCE, "the reader saw {} of {hub_total} messages", seen.len());
            let after = seen.last().map_or(Cursor::START, |item| item.cursor);
            let page = messages.stream(&hub_id, after, 7).await.expect("reading the stream");
            assert!(page.len() <= 7);
            for (k, item) in page.iter().enumerate() {
                assert_eq!(
                    item.cursor,
                    cursor(after.position() + 1 + k as u64),
                    "a stream read skipped a position"
                );
            }
            if page.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            seen.extend(page);
        }
        seen
    });

    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let messages = Arc::clone(&storage.messages);
            let sends: Vec<(User, User)> = (0..SENDS).map(|j| plan(i, j)).collect();
            tokio::spawn(async move {
                let mut stored = Vec::new();
                for (j, (from, to)) in sends.iter().enumerate() {
                    let (candidate, message) = draft(from, to, &format!("w{i}-{j}"), now());
                    let appended =
                        created(messages.append(&candidate, &message).await.expect("a concurrent append"));
                    // Once stored, the message is readable at its positions, and so is every
                    // position before them (what a client told of it by an event reads next).
                    for user in [&from.id, &to.id] {
                        let position = appended.cursor_for(user).unwrap().position();
                        let after = position.saturating_sub(4);
                        let window =
                            messages.stream(user, cursor(after), (position - after) as u32).await.unwrap();
                        assert_eq!(
                            positions(&window),
                            (after + 1..=position).collect::<Vec<_>>(),
                            "right after a send"
                        );
                        assert_eq!(window.last().map(|item| &item.message), Some(&appended.message));
                    }
                    stored.push(appended);
                }
                stored
            })
        })
        .collect();
    let mut stored = Vec::new();
    for writer in writers {
        stored.extend(tokio::time::timeout(PATIENCE, writer).await.expect("the writers finish").unwrap());
    }
    let seen = tokio::time::timeout(PATIENCE, reader).await.expect("the reader finishes").unwrap();
    assert_eq!(stored.len(), WRITERS * SENDS);

    // Every user's stream: positions 1..=n, each of their messages exactly once, at the
    // cursor its append returned.
    for user in senders.iter().chain([&hub]) {
        let stream = whole_stream(storage, user, 40).await;
        let mine: Vec<&StoredMessage> = stored.iter().filter(|s| s.cursor_for(&user.id).is_some()).collect();
        assert_eq!(
            positions(&stream),
            (1..=mine.len() as u64).collect::<Vec<_>>(),
            "{}",
            user.username.as_str()
        );
        for item in &stream {
            let original =
                mine.iter().find(|s| s.message.id == item.message.id).expect("a message of the user");
            assert_eq!(original.cursor_for(&user.id), Some(item.cursor));
            assert_eq!(item.message, original.message);
        }
        assert_eq!(storage.messages.stream_head(&user.id).await.unwrap(), cursor(mine.len() as u64));
    }
    // What the reader saw while the writers ran is exactly the final stream: nothing
    // appeared later below a position it had already read past.
    assert_eq!(seen, whole_stream(storage, &hub, 200).await);
    assert_eq!(seen.iter().map(|item| &item.message.id).collect::<HashSet<_>>().len(), hub_total);
}

async fn concurrent_retries_with_one_client_id_store_one_message(storage: &Storage) {
    for round in 0..3 {
        let a = insert_user(storage, &format!("sender{round}")).await;
        let b = insert_user(storage, &format!("receiver{round}")).await;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let messages = Arc::clone(&storage.messages);
                let (candidate, mut message) = draft(&a, &b, "only once", now());
                message.client_id = client_id("retried-key");
                tokio::spawn(async move { messages.append(&candidate, &message).await })
            })
            .collect();
        let mut winners = Vec::new();
        let mut earlier = Vec::new();
        for task in tasks {
            match tokio::time::timeout(PATIENCE, task).await.expect("the appends finish").unwrap() {
                Ok(Appended::Created(stored)) => winners.push(stored),
                Ok(Appended::Existing(stored)) => earlier.push(stored),
                Err(error) => panic!("round {round}: a racing retry failed: {error:?}"),
            }
        }
        assert_eq!((winners.len(), earlier.len()), (1, 9), "round {round}");
        let winner = winners.pop().unwrap();
        assert!(earlier.iter().all(|e| *e == winner), "round {round}: {earlier:?}");
        assert_eq!((winner.sender_cursor, winner.receiver_cursor), (cursor(1), cursor(1)));
        assert_eq!(history(storage, &a, &b).await, std::slice::from_ref(&winner.message));
        assert_eq!(storage.messages.stream_head(&a.id).await.unwrap(), cursor(1));
        assert_eq!(storage.messages.stream_head(&b.id).await.unwrap(), cursor(1));
        let stream = storage.messages.stream(&b.id, Cursor::START, 50).await.unwrap();
        assert_eq!(stream, [StreamItem { cursor: cursor(1), message: winner.message }]);
    }
}

// ---------------------------------------------------------------------------------------------
// Revocations

async fn revoke_twice_is_fine_and_the_token_is_revoked(storage: &Storage) {
    let expires = now() + Duration::days(7);
    storage.revoked.revoke("token-1", expires).await.unwrap();
    storage.revoked.revoke("token-1", expires + Duration::days(1)).await.expect("revoking twice");
    assert!(storage.revoked.is_revoked("token-1").await.unwrap());
    assert!(!storage.revoked.is_revoked("token-2").await.unwrap());

    let revocations = Arc::clone(&storage.revoked);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let revocations = revocations.clone();
            tokio::spawn(async move { revocations.revoke("raced", expires).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("concurrent revocations of one token");
    }
    assert!(storage.revoked.is_revoked("raced").await.unwrap());
}

async fn is_revoked_of_an_unknown_token_is_false(storage: &Storage) {
    assert!(!storage.revoked.is_revoked("never-revoked").await.unwrap());
    assert!(!storage.revoked.is_revoked("{\"$ne\":null}").await.unwrap());
    assert!(!storage.revoked.is_revoked("").await.unwrap());
}

async fn purge_expired_removes_and_counts_only_expired_revocations(storage: &Storage) {
    let now = now();
    let tokens = [
        ("long-gone", now - Duration::days(2)),
        ("just-gone", now - Duration::milliseconds(1)),
        ("expires-now", now),
        ("still-valid", now + Duration::hours(1)),
    ];
    for (id, expires) in tokens {
        storage.revoked.revoke(id, expires).await.unwrap();
    }

    assert_eq!(storage.revoked.purge_expired(now).await.unwrap(), 2);
    let revoked = |id: &'static str| async move { storage.revoked.is_revoked(id).await.unwrap() };
    assert!(!revoked("long-gone").await);
    assert!(!revoked("just-gone").await);
    assert!(revoked("expires-now").await, "a token expiring exactly now is kept");
    assert!(revoked("still-valid").await);
    assert_eq!(storage.revoked.purge_expired(now).await.unwrap(), 0);
    assert_eq!(storage.revoked.purge_expired(now + Duration::hours(2)).await.unwrap(), 2);
    assert!(!revoked("still-valid").await);
}

async fn active_lists_every_unexpired_revocation_once(storage: &Storage) {
    let now = now();
    assert_eq!(storage.revoked.active(now).await.unwrap(), []);
    let tokens = [
        ("long-gone", now - Duration::days(2)),
        ("just-gone", now - Duration::milliseconds(1)),
        ("expires-now", now),
        ("soon", now + Duration::milliseconds(1)),
        ("still-valid", now + Duration::hours(1)),
    ];
    for (id, expires) in tokens {
        storage.revoked.revoke(id, expires).await.unwrap();
    }
    storage.revoked.revoke("still-valid", now + Duration::hours(1)).await.expect("revoking twice");
    let active = |at: Timestamp| async move {
        let mut active = storage.revoked.active(at).await.unwrap();
        active.sort_by(|x, y| x.token_id.cmp(&y.token_id));
        active
    };
    let revocation =
        |token_id: &str, expires_at: Timestamp| Revocation { token_id: token_id.into(), expires_at };

    let expected = [
        revocation("expires-now", now),
        revocation("soon", now + Duration::milliseconds(1)),
        revocation("still-valid", now + Duration::hours(1)),
    ];
    assert_eq!(active(now).await, expected, "a token expiring exactly now is still active");
    assert_eq!(active(now + Duration::milliseconds(1)).await, expected[1..]);
    assert_eq!(active(now - Duration::days(3)).await.len(), tokens.len(), "all, before any expired");
    assert_eq!(active(now + Duration::hours(2)).await, []);
    // Purging at `now` removes exactly what `active(now)` leaves out.
    storage.revoked.purge_expired(now).await.unwrap();
    assert_eq!(active(now).await, expected);
    assert_eq!(active(now - Duration::days(3)).await, expected);
}

// ---------------------------------------------------------------------------------------------
// Health

async fn health_ping_succeeds(storage: &Storage) {
    storage.health.ping().await.expect("the store answers");
}
