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
    Appended, Changed, ConversationKey, ConversationPage, ConversationSummary, GroupAppended, GroupChange,
    GroupEntry, GroupPosition, GroupState, MembersPreview, Notice, Noticed, ReadMoved, RepoError, Revocation,
    SearchPrefix, StoredMessage, StreamEntry, StreamItem, UserQuery,
};
use chrono::{DateTime, Duration, Utc};
use domain::{
    Avatar, Chat, ClientMessageId, Conversation, ConversationId, Cursor, FullName, Gender, Group, GroupName,
    Member, Message, MessageBody, MessageId, ParticipantPair, PasswordHash, Role, Seq, SystemEvent,
    Timestamp, User, UserId, Username,
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
    user_find_many_returns_the_users_that_exist_each_once,
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
    stream_heads_of_many_users_are_read_at_once_leaving_out_empty_streams,
    client_id_retry_returns_the_first_message_and_stores_nothing,
    client_id_of_another_sender_is_another_message,
    concurrent_appends_leave_every_stream_gap_free_and_complete,
    concurrent_retries_with_one_client_id_store_one_message,
    group_create_stores_the_group_its_members_and_the_first_entry_at_seq_1,
    group_lookups_of_an_unknown_id_or_a_direct_conversation_find_no_group,
    group_create_with_a_taken_id_is_a_conflict_and_stores_nothing,
    group_change_renames_adds_removes_and_sets_roles_each_at_the_next_seq,
    group_change_at_a_stale_version_applies_nothing,
    group_change_adding_a_member_already_in_the_group_is_a_conflict_and_applies_nothing,
    group_append_takes_the_next_seq_and_moves_the_senders_read_only,
    group_append_by_a_non_member_stores_nothing,
    group_append_with_a_used_client_id_returns_the_first_entry_and_stores_nothing,
    group_concurrent_retries_with_one_client_id_store_one_entry,
    entries_are_read_by_seq_after_one_and_up_to_another_with_a_limit,
    list_by_conversation_from_seq_leaves_out_the_entries_before_it,
    mark_read_moves_the_read_position_forward_only_with_a_read_notice,
    mark_read_racing_from_two_tasks_keeps_the_highest_and_notices_each_move,
    stream_merges_direct_messages_and_notices_at_consecutive_positions,
    groups_at_and_left_after_follow_joining_leaving_and_joining_again,
    direct_conversations_have_seqs_and_both_users_as_members,
    page_for_user_lists_direct_conversations_and_groups_with_my_membership_and_unread,
    members_preview_gives_each_groups_first_members_and_count_in_the_order_asked,
    concurrent_group_sends_take_every_seq_once_and_a_reader_never_sees_a_hole,
    a_send_racing_a_removal_is_stored_before_it_or_refused,
    concurrent_sends_reads_and_group_changes_keep_every_stream_gap_free,
    concurrent_changes_at_one_version_apply_exactly_one,
    concurrent_direct_and_group_sends_with_one_client_id_store_one_message,
    revoke_twice_is_fine_and_the_token_is_revoked,
    is_revoked_of_an_unknown_token_is_false,
    purge_expired_removes_and_counts_only_expired_revocations,
    active_lists_every_unexpired_revocation_once,
    health_ping_succeeds,
    message_change_edit_takes_the_next_seq_and_both_streams_and_reads_back_everywhere,
    message_change_in_a_group_takes_the_groups_next_seq_and_no_stream_position,
    message_change_made_already_is_unchanged_and_takes_no_seq,
    message_change_deletion_leaves_a_tombstone_without_text_or_reactions_in_every_read,
    message_change_refusals_follow_the_rules_on_the_state_under_the_lock,
    message_change_by_a_non_member_is_not_member_and_of_a_message_out_of_sight_not_found,
    message_reply_quotes_the_original_as_it_stands_in_every_read,
    conversation_unread_counts_messages_after_my_read_position_that_are_not_deleted,
    entries_and_streams_merge_messages_and_change_entries_in_order,
    message_reactions_of_fifty_users_at_once_are_each_stored_once,
    message_identical_changes_racing_store_exactly_one,
    message_different_edits_racing_end_on_the_text_of_the_last_one_stored,
    message_reactions_keep_the_order_emoji_were_first_used,
    concurrent_sends_and_changes_of_a_direct_conversation_leave_no_hole,
);

/// Edits, deletions, reactions and replies.
#[path = "storage_contract/changes.rs"]
mod changes;
use changes::*;

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
    let id = UserId::generate();
    User {
        avatar: Avatar::default_for(&id),
        id,
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
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: conversation.id.clone(),
        sender_id: from.id.clone(),
        receiver_id: Some(to.id.clone()),
        body: MessageBody::parse(body).expect("a valid body"),
        system: None,
        seq: 0,
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
    storage.messages.list_by_conversation(&conversation.id, 1, None, 200).await.unwrap()
}

fn cursor(position: u64) -> Cursor {
    Cursor::new(position).expect("a valid position")
}

/// The direct message at a stream item; fails on a notice.
fn message_of(item: &StreamItem) -> &Message {
    item.message().unwrap_or_else(|| panic!("expected a direct message at {}: {item:?}", item.cursor))
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

async fn user_find_many_returns_the_users_that_exist_each_once(storage: &Storage) {
    let mut users = Vec::new();
    for n in 0..5 {
        users.push(insert_user(storage, &format!("many{n}")).await);
    }
    // In no particular order: compared by id.
    let sorted = |mut list: Vec<User>| {
        list.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        list
    };
    assert_eq!(storage.users.find_many(&[]).await.unwrap(), Vec::<User>::new());
    let unknown = UserId::generate();
    // Every field of each user found, unknown ids left out, a repeated id answered once.
    let asked =
        [users[3].id.clone(), unknown.clone(), users[0].id.clone(), users[3].id.clone(), users[4].id.clone()];
    let found = sorted(storage.users.find_many(&asked).await.unwrap());
    assert_eq!(found, sorted(vec![users[0].clone(), users[3].clone(), users[4].clone()]));
    assert_eq!(storage.users.find_many(&[unknown]).await.unwrap(), Vec::<User>::new());

    // A list as long as the largest group, in one call.
    let mut many: Vec<UserId> = (0..10_000).map(|_| UserId::generate()).collect();
    many.extend(users.iter().map(|u| u.id.clone()));
    let found = sorted(storage.users.find_many(&many).await.unwrap());
    assert_eq!(found, sorted(users));
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
    let stored = created(storage.messages.append(&conversation, &message).await.unwrap()).message;
    assert_eq!(stored, Message { seq: 1, ..message });
    assert_eq!(history(storage, &earlier, &other).await, vec![stored]);
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
    assert_eq!(conversation_ids(&listed), expected_ids);
    let listed = &listed[2..];

    assert_eq!(
        listed[0],
        ConversationSummary {
            conversation: Chat::Direct(Conversation {
                updated_at: t0 + Duration::seconds(30),
                last_seq: 1,
                ..with_c.clone()
            }),
            last_message: Some(last_c),
            me: Member { read_seq: 0, ..Member::joining(me.id.clone(), Role::Member, t0, 1) },
            unread: 1,
        }
    );
    assert_eq!(listed[1].last_message, Some(last_b));
    assert_eq!(listed[1].conversation.updated_at(), t0 + Duration::seconds(20));
    assert_eq!((&listed[2].last_message, &listed[3].last_message), (&None, &None));

    let theirs = storage.conversations.list_for_user(&c.id).await.unwrap();
    let ids = conversation_ids(&theirs);
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&with_c.id) && ids.contains(&not_mine.id));
    let elsewhere = theirs.iter().find(|s| s.conversation.id() == &not_mine.id).unwrap();
    assert_eq!(elsewhere.last_message.as_ref().map(|m| m.body.as_str()), Some("elsewhere"));
    assert_eq!(elsewhere.conversation.updated_at(), t0 + Duration::seconds(40));
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
    list.iter().map(|s| s.conversation.id().clone()).collect()
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
            let listed = storage
                .messages
                .list_by_conversation(&conversation.id, 1, before.clone(), limit)
                .await
                .unwrap();
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
    let message = Message { seq: 1, ..message };
    assert_eq!(
        stored,
        StoredMessage { message: message.clone(), sender_cursor: cursor(1), receiver_cursor: cursor(1) }
    );
    let without_key = created(storage.messages.append(&candidate, &without_key).await.unwrap()).message;
    assert_eq!(without_key.seq, 2);

    let listed = storage.messages.list_by_conversation(&conversation.id, 1, None, 50).await.unwrap();
    assert_eq!(listed, [message.clone(), without_key.clone()]);
    let summary = storage.conversations.list_for_user(&b.id).await.unwrap();
    assert_eq!(summary[0].last_message.as_ref(), Some(&without_key));
    let streamed = storage.messages.stream(&b.id, Cursor::START, 50).await.unwrap();
    assert_eq!(
        streamed,
        [
            StreamItem { cursor: cursor(1), entry: StreamEntry::Message(message.clone()) },
            StreamItem { cursor: cursor(2), entry: StreamEntry::Message(without_key) },
        ]
    );
}

async fn message_append_stores_the_candidate_conversation_when_the_pair_has_none(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let at = at_millis(1_700_000_000_000);
    let (candidate, message) = draft(&a, &b, "hello", at);

    let stored = created(storage.messages.append(&candidate, &message).await.unwrap());
    let message = Message { seq: 1, ..message };
    assert_eq!(stored.message, message);
    assert_eq!(
        storage.conversations.find_by_participants(&pair(&b, &a)).await.unwrap(),
        Some(Conversation { last_seq: 1, ..candidate.clone() })
    );
    assert_eq!(storage.messages.list_by_conversation(&candidate.id, 1, None, 50).await.unwrap(), [message]);
    assert_eq!(storage.conversations.list_for_user(&a.id).await.unwrap().len(), 1);
}

async fn message_append_joins_the_pairs_conversation_from_either_side(storage: &Storage) {
    let (a, b) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let first = send(storage, &a, &b, "first").await;
    let conversation = storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().unwrap();
    assert_eq!(first.conversation_id, conversation.id);

    let mut sent = vec![first];
    for (seq, (from, to, body)) in [(2, (&b, &a, "reply")), (3, (&a, &b, "again"))] {
        let (candidate, message) = draft(from, to, body, now());
        assert_ne!(candidate.id, conversation.id);
        let stored = created(storage.messages.append(&candidate, &message).await.unwrap());
        assert_eq!(stored.message, Message { conversation_id: conversation.id.clone(), seq, ..message });
        assert_eq!(
            storage.conversations.find_by_participants(&pair(&a, &b)).await.unwrap().map(|c| c.id),
            Some(conversation.id.clone()),
            "the candidate is not stored"
        );
        sent.push(stored.message);
    }
    assert_eq!(storage.messages.list_by_conversation(&conversation.id, 1, None, 50).await.unwrap(), sent);
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
    assert_eq!(stored, Conversation { updated_at: latest, last_seq: 4, ..conversation });
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
        async move { storage.messages.list_by_conversation(&id, 1, before, limit).await.unwrap() }
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
        async move { storage.messages.list_by_conversation(&id, 1, before, limit).await.unwrap() }
    };

    assert_eq!(list(None, 50).await, [], "a conversation without messages");
    assert_eq!(list(None, 50).await, []);
    let unknown = ConversationId::generate();
    assert_eq!(storage.messages.list_by_conversation(&unknown, 1, None, 50).await.unwrap(), []);

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
        let messages: Vec<Message> = stream.iter().map(|item| message_of(item).clone()).collect();
        assert_eq!(bodies(&messages), expected, "{}", user.username.as_str());
        for item in &stream {
            let original = stored.iter().find(|s| s.message.id == message_of(item).id).unwrap();
            assert_eq!(message_of(item), &original.message);
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
    let messages =
        |items: Vec<StreamItem>| items.iter().map(|item| message_of(item).clone()).collect::<Vec<_>>();

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

async fn stream_heads_of_many_users_are_read_at_once_leaving_out_empty_streams(storage: &Storage) {
    let (a, b, c, loner) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "loner").await,
    );
    for i in 0..3 {
        send(storage, &a, &b, &format!("ab{i}")).await;
    }
    send(storage, &c, &a, "ca").await;
    let unknown = UserId::generate();
    let asked = [a.id.clone(), b.id.clone(), loner.id.clone(), unknown, a.id.clone(), c.id.clone()];
    let mut heads = storage.messages.stream_heads(&asked).await.unwrap();
    heads.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
    let mut expected = vec![(a.id.clone(), cursor(4)), (b.id.clone(), cursor(3)), (c.id.clone(), cursor(1))];
    expected.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
    assert_eq!(heads, expected, "each once, the empty and unknown ones left out");
    for (user, head) in &heads {
        assert_eq!(storage.messages.stream_head(user).await.unwrap(), *head);
    }
    assert_eq!(storage.messages.stream_heads(&[]).await.unwrap(), []);
    assert_eq!(storage.messages.stream_heads(std::slice::from_ref(&loner.id)).await.unwrap(), []);
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
    assert_eq!((earlier.message.sender_id, earlier.message.receiver_id), (b.id.clone(), Some(a.id.clone())));
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
                        assert_eq!(window.last().map(message_of), Some(&appended.message));
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
                mine.iter().find(|s| s.message.id == message_of(item).id).expect("a message of the user");
            assert_eq!(original.cursor_for(&user.id), Some(item.cursor));
            assert_eq!(message_of(item), &original.message);
        }
        assert_eq!(storage.messages.stream_head(&user.id).await.unwrap(), cursor(mine.len() as u64));
    }
    // What the reader saw while the writers ran is exactly the final stream: nothing
    // appeared later below a position it had already read past.
    assert_eq!(seen, whole_stream(storage, &hub, 200).await);
    assert_eq!(seen.iter().map(|item| &message_of(item).id).collect::<HashSet<_>>().len(), hub_total);
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
        assert_eq!(stream, [StreamItem { cursor: cursor(1), entry: StreamEntry::Message(winner.message) }]);
    }
}

// ---------------------------------------------------------------------------------------------
// Groups: fixtures

fn group_name(raw: &str) -> GroupName {
    GroupName::parse(raw).expect("a valid group name")
}

/// A system entry of `group` by `actor`, as the group use cases build it: no seq yet.
fn system_entry(group: &ConversationId, actor: &User, event: SystemEvent, at: Timestamp) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: group.clone(),
        sender_id: actor.id.clone(),
        receiver_id: None,
        body: MessageBody::parse(&format!("{} {}", actor.username.as_str(), event.action()))
            .expect("a valid body"),
        system: Some(event),
        seq: 0,
        created_at: at,
        client_id: None,
    }
}

/// A message to `group`, as the messaging use case builds it: no receiver, no seq yet.
fn group_draft(group: &ConversationId, from: &User, body: &str, at: Timestamp) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: group.clone(),
        sender_id: from.id.clone(),
        receiver_id: None,
        body: MessageBody::parse(body).expect("a valid body"),
        system: None,
        seq: 0,
        created_at: at,
        client_id: None,
    }
}

/// A group as `create` stored it.
struct NewGroup {
    group: Group,
    /// Its first entry, as stored (seq 1).
    entry: Message,
    /// Its members as passed to `create`: the owner first.
    members: Vec<Member>,
    notices: Vec<Noticed>,
}

/// The group `owner` creates at `at` with `others`, as the group use case does: every member
/// joins at seq 1, the owner has read the first entry, the others have not.
async fn create_group_at(
    storage: &Storage,
    owner: &User,
    others: &[&User],
    name: &str,
    at: Timestamp,
) -> NewGroup {
    let group = Group {
        id: ConversationId::generate(),
        name: group_name(name),
        created_by: owner.id.clone(),
        created_at: at,
        updated_at: at,
        last_seq: 1,
    };
    let everyone: Vec<UserId> = [owner].iter().chain(others).map(|u| u.id.clone()).collect();
    let event = SystemEvent::Created { actor: owner.id.clone(), name: group.name.clone(), members: everyone };
    let entry = system_entry(&group.id, owner, event, at);
    let mut members = vec![Member {
        read_seq: 1,
        last_read_message_id: Some(entry.id.clone()),
        ..Member::joining(owner.id.clone(), Role::Owner, at, 1)
    }];
    for other in others {
        members.push(Member { read_seq: 0, ..Member::joining(other.id.clone(), Role::Member, at, 1) });
    }
    let notices = storage.groups.create(&group, &members, &entry).await.expect("creating a group");
    NewGroup { group, entry: Message { seq: 1, ..entry }, members, notices }
}

async fn create_group(storage: &Storage, owner: &User, others: &[&User]) -> NewGroup {
    create_group_at(storage, owner, others, "Team", now()).await
}

/// A change at `expected_version` that only stores `entry`; the tests fill in the rest.
fn change(expected_version: u64, entry: Message) -> GroupChange {
    GroupChange {
        expected_version,
        entry,
        rename: None,
        add: Vec::new(),
        remove: Vec::new(),
        roles: Vec::new(),
    }
}

/// The entry, version and notices of an applied change; fails otherwise.
fn applied(changed: Changed) -> (Message, u64, Vec<Noticed>) {
    match changed {
        Changed::Applied { entry, version, notices } => (entry, version, notices),
        Changed::Stale => panic!("expected the change to apply, it was stale"),
    }
}

/// Applies `change` to `group`; fails unless it applies.
async fn apply(
    storage: &Storage,
    group: &ConversationId,
    change: GroupChange,
) -> (Message, u64, Vec<Noticed>) {
    applied(storage.groups.change(group, &change).await.expect("changing a group"))
}

/// `actor` adds `users` as members to `group`, at its current version.
async fn add_members(storage: &Storage, group: &ConversationId, actor: &User, users: &[&User]) -> Message {
    let version = group_state(storage, group).await.version;
    let event =
        SystemEvent::Added { actor: actor.id.clone(), users: users.iter().map(|u| u.id.clone()).collect() };
    let add = users.iter().map(|u| (u.id.clone(), Role::Member)).collect();
    let change = GroupChange { add, ..change(version, system_entry(group, actor, event, now())) };
    apply(storage, group, change).await.0
}

/// `actor` removes `users` from `group` (themselves: they leave), at its current version.
async fn remove_members(storage: &Storage, group: &ConversationId, actor: &User, users: &[&User]) -> Message {
    let version = group_state(storage, group).await.version;
    let event = match users {
        [only] if only.id == actor.id => SystemEvent::Left { actor: actor.id.clone(), new_owner: None },
        _ => SystemEvent::Removed {
            actor: actor.id.clone(),
            users: users.iter().map(|u| u.id.clone()).collect(),
        },
    };
    let remove = users.iter().map(|u| u.id.clone()).collect();
    let change = GroupChange { remove, ..change(version, system_entry(group, actor, event, now())) };
    apply(storage, group, change).await.0
}

/// Appends `message` to its group; returns it as stored and the version it was stored under.
async fn group_append(storage: &Storage, message: &Message) -> (Message, u64) {
    match storage.messages.append_to_group(message).await.expect("appending to a group") {
        GroupAppended::Created { message, version } => (message, version),
        other => panic!("expected a new group message, got {other:?}"),
    }
}

/// `from` sends `body` to `group` now; returns the message as stored.
async fn group_send(storage: &Storage, group: &ConversationId, from: &User, body: &str) -> Message {
    group_append(storage, &group_draft(group, from, body, now())).await.0
}

async fn group_state(storage: &Storage, group: &ConversationId) -> GroupState {
    storage.groups.state(group).await.unwrap().expect("the group exists")
}

async fn member(storage: &Storage, conversation: &ConversationId, user: &User) -> Option<Member> {
    storage.conversations.member(conversation, &user.id).await.unwrap()
}

async fn head(storage: &Storage, user: &User) -> Cursor {
    storage.messages.stream_head(&user.id).await.unwrap()
}

/// The messages among a conversation's entries (none of these tests change a message).
fn messages_of(entries: Vec<GroupEntry>) -> Vec<Message> {
    entries
        .into_iter()
        .map(|entry| match entry {
            GroupEntry::Message(message) => message,
            GroupEntry::Update(update) => panic!("unexpected change entry {update:?}"),
        })
        .collect()
}

/// Every entry of the conversation, by seq.
async fn all_entries(storage: &Storage, conversation: &ConversationId) -> Vec<Message> {
    messages_of(storage.messages.entries(conversation, 0, None, 10_000).await.unwrap())
}

/// Members in joining order: by the seq they joined at, then (of those who joined together)
/// by user id.
fn in_joining_order(mut members: Vec<Member>) -> Vec<Member> {
    members.sort_by(|x, y| (x.joined_seq, &x.user_id).cmp(&(y.joined_seq, &y.user_id)));
    members
}

fn by_user(mut notices: Vec<Noticed>) -> Vec<Noticed> {
    notices.sort_by(|x, y| x.user.cmp(&y.user));
    notices
}

fn noticed(user: &User, position: u64, notice: Notice) -> Noticed {
    Noticed { user: user.id.clone(), cursor: cursor(position), notice }
}

fn joined(group: &ConversationId, seq: Seq) -> Notice {
    Notice::Joined { group: group.clone(), seq }
}

fn left(group: &ConversationId, seq: Seq) -> Notice {
    Notice::Left { group: group.clone(), seq }
}

fn read(conversation: &ConversationId, entry: &Message) -> Notice {
    Notice::Read { conversation: conversation.clone(), seq: entry.seq, message_id: entry.id.clone() }
}

fn notice_at(position: u64, notice: Notice) -> StreamItem {
    StreamItem { cursor: cursor(position), entry: StreamEntry::Notice(notice) }
}

fn message_at(position: u64, message: &Message) -> StreamItem {
    StreamItem { cursor: cursor(position), entry: StreamEntry::Message(message.clone()) }
}

fn seqs(entries: &[Message]) -> Vec<Seq> {
    entries.iter().map(|m| m.seq).collect()
}

// ---------------------------------------------------------------------------------------------
// Groups: creating, reading, changing

async fn group_create_stores_the_group_its_members_and_the_first_entry_at_seq_1(storage: &Storage) {
    let (ann, ben, cat, dan) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
    );
    // Ann's and Ben's streams hold direct messages already: their notices come right after.
    send(storage, &ann, &ben, "hi").await;
    send(storage, &ben, &dan, "yo").await;
    let t0 = at_millis(1_700_000_000_000);
    let created = create_group_at(storage, &ann, &[&ben, &cat], "Team ✓", t0).await;
    let id = created.group.id.clone();

    let expected =
        [(&ann, 2), (&ben, 3), (&cat, 1)].map(|(user, position)| noticed(user, position, joined(&id, 1)));
    assert_eq!(by_user(created.notices.clone()), by_user(expected.to_vec()));
    for (user, position) in [(&ann, 2), (&ben, 3), (&cat, 1)] {
        assert_eq!(head(storage, user).await, cursor(position), "{}", user.username.as_str());
        let stream = storage.messages.stream(&user.id, cursor(position - 1), 50).await.unwrap();
        assert_eq!(stream, [notice_at(position, joined(&id, 1))], "{}", user.username.as_str());
    }
    assert_eq!(head(storage, &dan).await, cursor(1), "no notice for a non-member");

    let state = group_state(storage, &id).await;
    assert_eq!(state.group, created.group, "stored with last_seq 1");
    assert_eq!(state.version, 1);
    assert_eq!(state.members, in_joining_order(created.members.clone()));
    let ids: Vec<UserId> = state.members.iter().map(|m| m.user_id.clone()).collect();
    assert_eq!(storage.groups.member_ids(&id).await.unwrap(), Some((ids, 1)));
    assert_eq!(storage.conversations.find(&id).await.unwrap(), Some(Chat::Group(created.group.clone())));
    for expected in &created.members {
        assert_eq!(
            storage.conversations.member(&id, &expected.user_id).await.unwrap().as_ref(),
            Some(expected)
        );
    }
    assert_eq!(member(storage, &id, &dan).await, None);

    // The first entry: a system entry at seq 1 (the store assigns it), read back whole.
    assert_eq!(created.entry.seq, 1);
    assert!(matches!(created.entry.system, Some(SystemEvent::Created { .. })));
    assert_eq!(all_entries(storage, &id).await, std::slice::from_ref(&created.entry));
    assert_eq!(storage.messages.list_by_conversation(&id, 1, None, 50).await.unwrap(), [created.entry]);
}

async fn group_lookups_of_an_unknown_id_or_a_direct_conversation_find_no_group(storage: &Storage) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let direct = send(storage, &ann, &ben, "hi").await.conversation_id;
    create_group(storage, &ann, &[&ben]).await;
    let unknown = ConversationId::generate();
    for id in [&unknown, &direct] {
        assert_eq!(storage.groups.state(id).await.unwrap(), None);
        assert_eq!(storage.groups.member_ids(id).await.unwrap(), None);
    }
    assert_eq!(storage.conversations.find(&unknown).await.unwrap(), None);
    assert_eq!(storage.conversations.member(&unknown, &ann.id).await.unwrap(), None);
    assert!(matches!(storage.conversations.find(&direct).await.unwrap(), Some(Chat::Direct(_))));
    let stranger = UserId::generate();
    assert_eq!(storage.groups.groups_at(&stranger, cursor(5)).await.unwrap(), []);
    assert_eq!(storage.groups.left_after(&stranger, &unknown, Cursor::START).await.unwrap(), None);
}

async fn group_create_with_a_taken_id_is_a_conflict_and_stores_nothing(storage: &Storage) {
    let (ann, ben, cat, dan) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
    );
    let first = create_group(storage, &ann, &[&ben]).await;
    let direct = send(storage, &ann, &ben, "hi").await;
    let heads =
        || async { (head(storage, &ann).await, head(storage, &cat).await, head(storage, &dan).await) };
    let heads_before = heads().await;
    let at = now();

    for taken in [&first.group.id, &direct.conversation_id] {
        let group = Group {
            id: taken.clone(),
            name: group_name("Clash"),
            created_by: cat.id.clone(),
            created_at: at,
            updated_at: at,
            last_seq: 1,
        };
        let members = [
            Member::joining(cat.id.clone(), Role::Owner, at, 1),
            Member { read_seq: 0, ..Member::joining(dan.id.clone(), Role::Member, at, 1) },
        ];
        let event = SystemEvent::Created {
            actor: cat.id.clone(),
            name: group.name.clone(),
            members: vec![cat.id.clone(), dan.id.clone()],
        };
        let entry = system_entry(taken, &cat, event, at);
        let result = storage.groups.create(&group, &members, &entry).await;
        assert!(matches!(result, Err(RepoError::Conflict)), "{result:?}");
        assert_eq!(member(storage, taken, &cat).await, None);
        assert_eq!(member(storage, taken, &dan).await, None);
    }
    assert_eq!(heads().await, heads_before, "no notice was appended");
    assert_eq!(group_state(storage, &first.group.id).await.group, first.group);
    assert_eq!(all_entries(storage, &first.group.id).await, [first.entry]);
    assert_eq!(all_entries(storage, &direct.conversation_id).await, std::slice::from_ref(&direct));
    assert!(matches!(
        storage.conversations.find(&direct.conversation_id).await.unwrap(),
        Some(Chat::Direct(_))
    ));
    assert_eq!(storage.groups.groups_at(&cat.id, cursor(10)).await.unwrap(), []);
}

async fn group_change_renames_adds_removes_and_sets_roles_each_at_the_next_seq(storage: &Storage) {
    let (ann, ben, cat, dan, eve) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
        insert_user(storage, "eve").await,
    );
    send(storage, &eve, &dan, "before").await;
    let t0 = at_millis(1_700_000_000_000);
    let at = |seconds: i64| t0 + Duration::seconds(seconds);
    let created = create_group_at(storage, &ann, &[&ben, &cat], "Team", t0).await;
    let id = created.group.id.clone();
    let member_of = |user: &User| {
        let user = user.clone();
        let id = id.clone();
        async move { member(storage, &id, &user).await }
    };

    // Rename: the entry takes seq 2, the version moves, the actor's read moves, no notice.
    let renamed = SystemEvent::Renamed { actor: ann.id.clone(), name: group_name("Crew") };
    let entry = system_entry(&id, &ann, renamed, at(1));
    let (stored, version, notices) =
        apply(storage, &id, GroupChange { rename: Some(group_name("Crew")), ..change(1, entry.clone()) })
            .await;
    assert_eq!((stored.clone(), version, notices), (Message { seq: 2, ..entry }, 2, vec![]));
    let state = group_state(storage, &id).await;
    assert_eq!(
        state.group,
        Group { name: group_name("Crew"), updated_at: at(1), last_seq: 2, ..created.group.clone() }
    );
    assert_eq!(state.version, 2);
    let ann_read = member_of(&ann).await.unwrap();
    assert_eq!((ann_read.read_seq, ann_read.last_read_message_id), (2, Some(stored.id.clone())));
    assert_eq!(member_of(&ben).await.unwrap().read_seq, 0, "only the actor's read moves");

    // Add Dan (a member) and Eve (an admin): they join at seq 3 with everything before it read,
    // and each gets a Joined notice at the next position of their stream (Eve and Dan have one
    // direct message each already).
    let added = SystemEvent::Added { actor: ann.id.clone(), users: vec![dan.id.clone(), eve.id.clone()] };
    let entry = system_entry(&id, &ann, added, at(2));
    let add = vec![(dan.id.clone(), Role::Member), (eve.id.clone(), Role::Admin)];
    let (stored, version, notices) =
        apply(storage, &id, GroupChange { add, ..change(2, entry.clone()) }).await;
    assert_eq!((stored.clone(), version), (Message { seq: 3, ..entry }, 3));
    assert_eq!(
        by_user(notices),
        by_user(vec![noticed(&dan, 2, joined(&id, 3)), noticed(&eve, 2, joined(&id, 3))])
    );
    for user in [&dan, &eve] {
        let stream = storage.messages.stream(&user.id, cursor(1), 50).await.unwrap();
        assert_eq!(stream, [notice_at(2, joined(&id, 3))]);
    }
    let joining =
        |user: &User, role: Role| Member { read_seq: 2, ..Member::joining(user.id.clone(), role, at(2), 3) };
    assert_eq!(member_of(&dan).await, Some(joining(&dan, Role::Member)));
    assert_eq!(member_of(&eve).await, Some(joining(&eve, Role::Admin)));
    assert_eq!(member_of(&ann).await.unwrap().read_seq, 3);

    // Roles: Ben becomes an admin.
    let role = SystemEvent::RoleChanged { actor: ann.id.clone(), user: ben.id.clone(), role: Role::Admin };
    let entry = system_entry(&id, &ann, role, at(3));
    let roles = vec![(ben.id.clone(), Role::Admin)];
    let (role_entry, version, notices) =
        apply(storage, &id, GroupChange { roles, ..change(3, entry.clone()) }).await;
    assert_eq!((role_entry.clone(), version, notices), (Message { seq: 4, ..entry }, 4, vec![]));
    assert_eq!(member_of(&ben).await.unwrap().role, Role::Admin);
    assert_eq!(member_of(&dan).await.unwrap().role, Role::Member);

    // Ben (an admin now) removes Cat: her row goes, she gets a Left notice at seq 5; Ben's
    // read moves, Ann's stays.
    let removed = SystemEvent::Removed { actor: ben.id.clone(), users: vec![cat.id.clone()] };
    let entry = system_entry(&id, &ben, removed, at(4));
    let remove = vec![cat.id.clone()];
    let (stored, version, notices) =
        apply(storage, &id, GroupChange { remove, ..change(4, entry.clone()) }).await;
    assert_eq!((stored.clone(), version), (Message { seq: 5, ..entry }, 5));
    assert_eq!(notices, [noticed(&cat, 2, left(&id, 5))]);
    assert_eq!(member_of(&cat).await, None);
    let ben_read = member_of(&ben).await.unwrap();
    assert_eq!((ben_read.read_seq, ben_read.last_read_message_id), (5, Some(stored.id.clone())));
    assert_eq!(member_of(&ann).await.unwrap().read_seq, 4);
    assert_eq!(
        storage.messages.stream(&cat.id, Cursor::START, 50).await.unwrap(),
        [notice_at(1, joined(&id, 1)), notice_at(2, left(&id, 5))]
    );

    // Ben leaves: the actor is gone, so no read moves.
    let leave = SystemEvent::Left { actor: ben.id.clone(), new_owner: None };
    let entry = system_entry(&id, &ben, leave, at(5));
    let remove = vec![ben.id.clone()];
    let (stored, version, notices) =
        apply(storage, &id, GroupChange { remove, ..change(5, entry.clone()) }).await;
    assert_eq!((stored, version), (Message { seq: 6, ..entry }, 6));
    assert_eq!(notices, [noticed(&ben, 2, left(&id, 6))]);
    assert_eq!(member_of(&ben).await, None);

    let state = group_state(storage, &id).await;
    assert_eq!(
        state.group,
        Group { name: group_name("Crew"), updated_at: at(5), last_seq: 6, ..created.group.clone() }
    );
    assert_eq!(state.version, 6);
    let expected = in_joining_order(vec![
        Member {
            read_seq: 4,
            last_read_message_id: Some(role_entry.id.clone()),
            ..created.members[0].clone()
        },
        joining(&dan, Role::Member),
        joining(&eve, Role::Admin),
    ]);
    assert_eq!(state.members, expected);
    assert_eq!(expected[0].user_id, ann.id, "joined first");
    let ids: Vec<UserId> = expected.iter().map(|m| m.user_id.clone()).collect();
    assert_eq!(storage.groups.member_ids(&id).await.unwrap(), Some((ids, 6)));
    assert_eq!(storage.conversations.find(&id).await.unwrap(), Some(Chat::Group(state.group)));
    let entries = all_entries(storage, &id).await;
    assert_eq!(seqs(&entries), [1, 2, 3, 4, 5, 6]);
    assert!(entries.iter().all(|e| e.system.is_some() && e.receiver_id.is_none() && e.conversation_id == id));
}

async fn group_change_at_a_stale_version_applies_nothing(storage: &Storage) {
    let (ann, ben, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let created = create_group(storage, &ann, &[&ben]).await;
    let id = created.group.id.clone();
    let renamed = SystemEvent::Renamed { actor: ann.id.clone(), name: group_name("Crew") };
    apply(
        storage,
        &id,
        GroupChange {
            rename: Some(group_name("Crew")),
            ..change(1, system_entry(&id, &ann, renamed, now()))
        },
    )
    .await;
    let state_before = group_state(storage, &id).await;
    let entries_before = all_entries(storage, &id).await;
    let heads =
        || async { (head(storage, &ann).await, head(storage, &ben).await, head(storage, &cat).await) };
    let heads_before = heads().await;

    let event = SystemEvent::Added { actor: ann.id.clone(), users: vec![cat.id.clone()] };
    let stale = GroupChange {
        rename: Some(group_name("Stale")),
        add: vec![(cat.id.clone(), Role::Member)],
        remove: vec![ben.id.clone()],
        roles: vec![(ann.id.clone(), Role::Admin)],
        ..change(1, system_entry(&id, &ann, event, now()))
    };
    for version in [1, 3, 100] {
        let result =
            storage.groups.change(&id, &GroupChange { expected_version: version, ..stale.clone() }).await;
        assert_eq!(result.unwrap(), Changed::Stale, "at version {version}");
    }
    assert_eq!(group_state(storage, &id).await, state_before);
    assert_eq!(all_entries(storage, &id).await, entries_before);
    assert_eq!(heads().await, heads_before, "no notice was appended");
    assert_eq!(member(storage, &id, &cat).await, None);

    // The same change at the current version applies: nothing of it was stored before.
    let (entry, version, notices) =
        apply(storage, &id, GroupChange { expected_version: 2, ..stale.clone() }).await;
    assert_eq!((entry, version), (Message { seq: 3, ..stale.entry.clone() }, 3));
    assert_eq!(
        by_user(notices),
        by_user(vec![noticed(&cat, 1, joined(&id, 3)), noticed(&ben, 2, left(&id, 3))])
    );
    let state = group_state(storage, &id).await;
    assert_eq!(state.group.name, group_name("Stale"));
    assert_eq!(state.member(&ann.id).map(|m| m.role), Some(Role::Admin));
}

async fn group_change_adding_a_member_already_in_the_group_is_a_conflict_and_applies_nothing(
    storage: &Storage,
) {
    let (ann, ben, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let created = create_group(storage, &ann, &[&ben]).await;
    let id = created.group.id.clone();
    let state_before = group_state(storage, &id).await;
    let heads =
        || async { (head(storage, &ann).await, head(storage, &ben).await, head(storage, &cat).await) };
    let heads_before = heads().await;

    for add in [vec![&cat, &ben], vec![&ann], vec![&cat, &cat]] {
        let event =
            SystemEvent::Added { actor: ann.id.clone(), users: add.iter().map(|u| u.id.clone()).collect() };
        let conflicting = GroupChange {
            rename: Some(group_name("Renamed")),
            add: add.iter().map(|u| (u.id.clone(), Role::Member)).collect(),
            ..change(1, system_entry(&id, &ann, event, now()))
        };
        let result = storage.groups.change(&id, &conflicting).await;
        assert!(matches!(result, Err(RepoError::Conflict)), "{result:?}");
        assert_eq!(group_state(storage, &id).await, state_before, "nothing applied");
        assert_eq!(all_entries(storage, &id).await, std::slice::from_ref(&created.entry));
        assert_eq!(heads().await, heads_before, "no notice was appended");
    }
    let entry = add_members(storage, &id, &ann, &[&cat]).await;
    assert_eq!(entry.seq, 2);
    assert_eq!(group_state(storage, &id).await.version, 2);
}

// ---------------------------------------------------------------------------------------------
// Groups: messages

async fn group_append_takes_the_next_seq_and_moves_the_senders_read_only(storage: &Storage) {
    let (ann, ben, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let t0 = at_millis(1_700_000_000_000);
    let created = create_group_at(storage, &ann, &[&ben, &cat], "Team", t0).await;
    let id = created.group.id.clone();
    let heads =
        || async { (head(storage, &ann).await, head(storage, &ben).await, head(storage, &cat).await) };
    let heads_before = heads().await;

    let mut sent = vec![created.entry.clone()];
    for (i, from) in [&ben, &cat, &ann].into_iter().enumerate() {
        let mut message = group_draft(
            &id,
            from,
            &format!("  <b>m{i}</b> & \"x\" \u{1F600}\n"),
            t0 + Duration::seconds(1 + i as i64),
        );
        message.client_id = if i == 1 { None } else { client_id(&format!("key-{i}")) };
        let (stored, version) = group_append(storage, &message).await;
        assert_eq!((stored.clone(), version), (Message { seq: 2 + i as u64, ..message }, 1));
        let read = member(storage, &id, from).await.unwrap();
        assert_eq!((read.read_seq, read.last_read_message_id), (stored.seq, Some(stored.id.clone())));
        sent.push(stored);
    }
    assert_eq!(member(storage, &id, &ben).await.unwrap().read_seq, 2, "others' sends leave my read alone");
    assert_eq!(member(storage, &id, &cat).await.unwrap().read_seq, 3);
    assert_eq!(heads().await, heads_before, "a group message takes no stream position");

    let state = group_state(storage, &id).await;
    assert_eq!(state.version, 1, "sends leave the membership version alone");
    assert_eq!(
        state.group,
        Group { updated_at: t0 + Duration::seconds(3), last_seq: 4, ..created.group.clone() }
    );
    assert_eq!(all_entries(storage, &id).await, sent);
    assert_eq!(storage.messages.list_by_conversation(&id, 1, None, 50).await.unwrap(), sent);

    // A message dated before the last update joins at the next seq and leaves updated_at alone.
    let (earlier, _) = group_append(storage, &group_draft(&id, &ben, "late", t0)).await;
    assert_eq!(earlier.seq, 5);
    let state = group_state(storage, &id).await;
    assert_eq!((state.group.updated_at, state.group.last_seq), (t0 + Duration::seconds(3), 5));
    let listed = storage.conversations.list_for_user(&cat.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].conversation, Chat::Group(state.group));
    assert_eq!(listed[0].unread(), 2, "ann's and ben's messages after cat's");
}

async fn group_append_by_a_non_member_stores_nothing(storage: &Storage) {
    let (ann, ben, cat, dan) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
    );
    let created = create_group(storage, &ann, &[&ben, &cat]).await;
    let id = created.group.id.clone();
    remove_members(storage, &id, &ann, &[&cat]).await;
    let state_before = group_state(storage, &id).await;

    let mut cats = group_draft(&id, &cat, "still here?", now());
    cats.client_id = client_id("cats-key");
    let strangers = group_draft(&id, &dan, "let me in", now());
    let nowhere = group_draft(&ConversationId::generate(), &ann, "anyone?", now());
    for attempt in [&cats, &strangers, &nowhere] {
        let result = storage.messages.append_to_group(attempt).await.unwrap();
        assert_eq!(result, GroupAppended::NotMember, "{}", attempt.body.as_str());
    }
    assert_eq!(group_state(storage, &id).await, state_before);
    assert_eq!(seqs(&all_entries(storage, &id).await), [1, 2]);
    assert_eq!(all_entries(storage, &nowhere.conversation_id).await, []);

    // Back in the group, the same message is stored: neither its id nor its client id was used.
    add_members(storage, &id, &ann, &[&cat]).await;
    let (stored, version) = group_append(storage, &cats).await;
    assert_eq!((stored, version), (Message { seq: 4, ..cats }, 3));
}

async fn group_append_with_a_used_client_id_returns_the_first_entry_and_stores_nothing(storage: &Storage) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let id = create_group(storage, &ann, &[&ben]).await.group.id;
    let other = create_group(storage, &ben, &[&ann]).await.group.id;
    let mut message = group_draft(&id, &ben, "once", now());
    message.client_id = client_id("key-1");
    let (first, _) = group_append(storage, &message).await;

    // A retry (a new id, a later date), another text, another group: the key names the first.
    let mut retry = group_draft(&id, &ben, "once", now() + Duration::seconds(1));
    retry.client_id = client_id("key-1");
    let other_text =
        Message { id: MessageId::generate(), body: MessageBody::parse("else").unwrap(), ..retry.clone() };
    let other_group = Message { id: MessageId::generate(), conversation_id: other.clone(), ..retry.clone() };
    for attempt in [&retry, &other_text, &other_group] {
        let result = storage.messages.append_to_group(attempt).await.unwrap();
        assert_eq!(result, GroupAppended::Existing(first.clone()), "{}", attempt.body.as_str());
    }
    assert_eq!(all_entries(storage, &id).await.len(), 2);
    assert_eq!(all_entries(storage, &other).await.len(), 1);
    assert_eq!(
        group_state(storage, &id).await.group.updated_at,
        first.created_at,
        "the retry's date is not applied"
    );

    // Another sender's key is another message.
    let mut anns = group_draft(&id, &ann, "once", now());
    anns.client_id = client_id("key-1");
    assert_eq!(group_append(storage, &anns).await.0.seq, 3);

    // Keys span conversations of both kinds: a direct message's key names that message …
    let (candidate, mut direct) = draft(&ben, &ann, "direct", now());
    direct.client_id = client_id("key-2");
    let direct = created(storage.messages.append(&candidate, &direct).await.unwrap()).message;
    let mut reused = group_draft(&id, &ben, "direct", now());
    reused.client_id = client_id("key-2");
    assert_eq!(
        storage.messages.append_to_group(&reused).await.unwrap(),
        GroupAppended::Existing(direct.clone())
    );
    assert_eq!(all_entries(storage, &id).await.len(), 3);
    // … and a group message's key names the group message: no direct message is stored.
    let (candidate, mut reused) = draft(&ben, &ann, "once", now());
    reused.client_id = client_id("key-1");
    let earlier = existing(storage.messages.append(&candidate, &reused).await.unwrap());
    assert_eq!(earlier.message, first);
    assert_eq!(history(storage, &ann, &ben).await, [direct]);
}

async fn group_concurrent_retries_with_one_client_id_store_one_entry(storage: &Storage) {
    for round in 0..3 {
        let a = insert_user(storage, &format!("sender{round}")).await;
        let b = insert_user(storage, &format!("member{round}")).await;
        let id = create_group(storage, &a, &[&b]).await.group.id;
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let messages = Arc::clone(&storage.messages);
                let mut message = group_draft(&id, &a, "only once", now());
                message.client_id = client_id("retried-key");
                tokio::spawn(async move { messages.append_to_group(&message).await })
            })
            .collect();
        let mut winners = Vec::new();
        let mut earlier = Vec::new();
        for task in tasks {
            match tokio::time::timeout(PATIENCE, task).await.expect("the appends finish").unwrap() {
                Ok(GroupAppended::Created { message, .. }) => winners.push(message),
                Ok(GroupAppended::Existing(message)) => earlier.push(message),
                other => panic!("round {round}: a racing retry ended otherwise: {other:?}"),
            }
        }
        assert_eq!((winners.len(), earlier.len()), (1, 9), "round {round}");
        let winner = winners.pop().unwrap();
        assert!(earlier.iter().all(|e| *e == winner), "round {round}: {earlier:?}");
        assert_eq!(winner.seq, 2);
        assert_eq!(all_entries(storage, &id).await[1..], [winner]);
        assert_eq!(group_state(storage, &id).await.group.last_seq, 2);
    }
}

async fn entries_are_read_by_seq_after_one_and_up_to_another_with_a_limit(storage: &Storage) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let created = create_group(storage, &ann, &[&ben]).await;
    let id = created.group.id.clone();
    let mut all = vec![created.entry];
    for i in 2..=7 {
        let from = if i % 2 == 0 { &ann } else { &ben };
        all.push(group_send(storage, &id, from, &format!("m{i}")).await);
    }
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6, 7]);
    let cases: [(Seq, Option<Seq>, u32, &[Message]); 13] = [
        (0, None, 50, &all),
        (0, None, 3, &all[..3]),
        (3, None, 2, &all[3..5]),
        (2, Some(5), 50, &all[2..5]),
        (2, Some(5), 2, &all[2..4]),
        (4, Some(5), 50, &all[4..5]),
        (5, Some(5), 50, &[]),
        (5, Some(3), 50, &[]),
        (6, None, 50, &all[6..]),
        (7, None, 50, &[]),
        (9, None, 50, &[]),
        (0, Some(100), 50, &all),
        (0, None, 0, &[]),
    ];
    for (after, until, limit, expected) in cases {
        let entries = messages_of(storage.messages.entries(&id, after, until, limit).await.unwrap());
        assert_eq!(entries, expected, "after {after}, until {until:?}, limit {limit}");
    }
    assert_eq!(
        messages_of(storage.messages.entries(&ConversationId::generate(), 0, None, 50).await.unwrap()),
        []
    );

    // Direct conversations have seqs too.
    let first = send(storage, &ann, &ben, "d1").await;
    let second = send(storage, &ben, &ann, "d2").await;
    assert_eq!((first.seq, second.seq), (1, 2));
    let direct = &first.conversation_id;
    assert_eq!(
        messages_of(storage.messages.entries(direct, 0, None, 50).await.unwrap()),
        [first.clone(), second.clone()]
    );
    assert_eq!(messages_of(storage.messages.entries(direct, 1, None, 50).await.unwrap()), [second]);
    assert_eq!(messages_of(storage.messages.entries(direct, 0, Some(1), 50).await.unwrap()), [first]);
}

async fn list_by_conversation_from_seq_leaves_out_the_entries_before_it(storage: &Storage) {
    let (ann, ben, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let created = create_group(storage, &ann, &[&ben]).await;
    let id = created.group.id.clone();
    let mut all = vec![created.entry];
    all.push(group_send(storage, &id, &ann, "m2").await);
    all.push(group_send(storage, &id, &ben, "m3").await);
    all.push(add_members(storage, &id, &ann, &[&cat]).await);
    for i in 5..=7 {
        all.push(group_send(storage, &id, &cat, &format!("m{i}")).await);
    }
    assert_eq!(seqs(&all), [1, 2, 3, 4, 5, 6, 7]);
    let joined_at = member(storage, &id, &cat).await.unwrap().joined_seq;
    assert_eq!(joined_at, 4);
    let list = |from_seq: Seq, before: Option<&Message>, limit: u32| {
        let before = before.map(|m| m.id.clone());
        let id = id.clone();
        async move { storage.messages.list_by_conversation(&id, from_seq, before, limit).await.unwrap() }
    };
    assert_eq!(list(4, None, 50).await, &all[3..]);
    assert_eq!(list(4, None, 2).await, &all[5..]);
    assert_eq!(list(4, Some(&all[5]), 50).await, &all[3..5]);
    assert_eq!(list(4, Some(&all[4]), 1).await, &all[3..4]);
    assert_eq!(list(4, Some(&all[3]), 50).await, [], "nothing before the joining entry");
    assert_eq!(list(4, Some(&all[2]), 50).await, []);
    assert_eq!(list(1, None, 50).await, all);
    assert_eq!(list(0, None, 50).await, all);
    assert_eq!(list(1, Some(&all[3]), 2).await, &all[1..3]);
    assert_eq!(list(7, None, 50).await, &all[6..]);
    assert_eq!(list(8, None, 50).await, []);
}

// ---------------------------------------------------------------------------------------------
// Read positions

async fn mark_read_moves_the_read_position_forward_only_with_a_read_notice(storage: &Storage) {
    let (ann, ben, cat, dan) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
    );
    let created = create_group(storage, &ann, &[&ben]).await;
    let id = created.group.id.clone();
    let m2 = group_send(storage, &id, &ann, "m2").await;
    let m3 = group_send(storage, &id, &ann, "m3").await;
    let m4 = group_send(storage, &id, &ann, "m4").await;
    let mark = |conversation: &ConversationId, user: &User, up_to: &Message| {
        let (conversation, user, up_to) = (conversation.clone(), user.id.clone(), up_to.id.clone());
        async move { storage.messages.mark_read(&conversation, &user, &up_to).await.unwrap() }
    };
    assert_eq!(head(storage, &ben).await, cursor(1));

    assert_eq!(mark(&id, &ben, &m3).await, ReadMoved::Moved { seq: 3, cursor: cursor(2) });
    let ben_member = member(storage, &id, &ben).await.unwrap();
    assert_eq!((ben_member.read_seq, ben_member.last_read_message_id.clone()), (3, Some(m3.id.clone())));
    assert_eq!(
        storage.messages.stream(&ben.id, cursor(1), 50).await.unwrap(),
        [notice_at(2, read(&id, &m3))]
    );

    // Never back, and not again: the position stays, no notice.
    for up_to in [&m2, &m3, &created.entry] {
        assert_eq!(mark(&id, &ben, up_to).await, ReadMoved::NotAhead { seq: 3 }, "up to seq {}", up_to.seq);
    }
    assert_eq!(head(storage, &ben).await, cursor(2));
    assert_eq!(member(storage, &id, &ben).await.unwrap(), ben_member);
    assert_eq!(mark(&id, &ben, &m4).await, ReadMoved::Moved { seq: 4, cursor: cursor(3) });
    // My own sends moved my position already.
    assert_eq!(mark(&id, &ann, &m4).await, ReadMoved::NotAhead { seq: 4 });
    assert_eq!(head(storage, &ann).await, cursor(1));

    // What a reader cannot read.
    let direct = send(storage, &ann, &ben, "direct").await;
    let unknown = Message { id: MessageId::generate(), ..m4.clone() };
    assert_eq!(mark(&id, &ben, &unknown).await, ReadMoved::UnknownMessage);
    assert_eq!(
        mark(&id, &ben, &direct).await,
        ReadMoved::UnknownMessage,
        "a message of another conversation"
    );
    assert_eq!(mark(&id, &dan, &m4).await, ReadMoved::NotMember, "a stranger");
    assert_eq!(mark(&ConversationId::generate(), &ben, &m4).await, ReadMoved::NotMember);
    // A member added later reads from their joining entry on: what came before is not theirs.
    let added = add_members(storage, &id, &ann, &[&cat]).await;
    assert_eq!(member(storage, &id, &cat).await.unwrap().read_seq, 4);
    assert_eq!(mark(&id, &cat, &m4).await, ReadMoved::UnknownMessage);
    assert_eq!(mark(&id, &cat, &added).await, ReadMoved::Moved { seq: 5, cursor: cursor(2) });
    // A removed member reads nothing any more.
    let removed = remove_members(storage, &id, &ann, &[&ben]).await;
    assert_eq!(mark(&id, &ben, &removed).await, ReadMoved::NotMember);
    let ben_head = head(storage, &ben).await;

    // Direct conversations alike: the receiver reads, the sender has read their own.
    let conversation = &direct.conversation_id;
    assert_eq!(mark(conversation, &ben, &direct).await, ReadMoved::Moved { seq: 1, cursor: ben_head.next() });
    let reply = send(storage, &ben, &ann, "reply").await;
    assert_eq!(mark(conversation, &ben, &reply).await, ReadMoved::NotAhead { seq: 2 }, "my own message");
    assert_eq!(mark(conversation, &ann, &direct).await, ReadMoved::NotAhead { seq: 1 });
    let ann_head = head(storage, &ann).await;
    assert_eq!(mark(conversation, &ann, &reply).await, ReadMoved::Moved { seq: 2, cursor: ann_head.next() });
    assert_eq!(mark(conversation, &cat, &reply).await, ReadMoved::NotMember);
    assert_eq!(mark(conversation, &ann, &m2).await, ReadMoved::UnknownMessage);
    let ann_member = member(storage, conversation, &ann).await.unwrap();
    assert_eq!((ann_member.read_seq, ann_member.last_read_message_id), (2, Some(reply.id.clone())));
    assert_eq!(
        storage.messages.stream(&ann.id, ann_head, 50).await.unwrap(),
        [notice_at(ann_head.next().position(), read(conversation, &reply))]
    );
}

async fn mark_read_racing_from_two_tasks_keeps_the_highest_and_notices_each_move(storage: &Storage) {
    const ENTRIES: u64 = 30;
    for round in 0..3 {
        let ann = insert_user(storage, &format!("writer{round}")).await;
        let ben = insert_user(storage, &format!("reader{round}")).await;
        let id = create_group(storage, &ann, &[&ben]).await.group.id;
        let mut sent = Vec::new();
        for i in 2..=ENTRIES + 1 {
            sent.push(group_send(storage, &id, &ann, &format!("m{i}")).await);
        }
        // One device reads forward entry by entry, the other jumps back and forth.
        let forward: Vec<Message> = sent.clone();
        let mut jumping: Vec<Message> = sent.iter().rev().step_by(3).cloned().collect();
        jumping.rotate_left(round + 1);
        let tasks: Vec<_> = [forward, jumping]
            .into_iter()
            .map(|order| {
                let messages = Arc::clone(&storage.messages);
                let (id, reader) = (id.clone(), ben.id.clone());
                tokio::spawn(async move {
                    let mut results = Vec::new();
                    for entry in order {
                        let result =
                            messages.mark_read(&id, &reader, &entry.id).await.expect("a racing read");
                        results.push((entry, result));
                    }
                    results
                })
            })
            .collect();
        let mut moves: Vec<(Cursor, Seq)> = Vec::new();
        for task in tasks {
            for (entry, result) in
                tokio::time::timeout(PATIENCE, task).await.expect("the reads finish").unwrap()
            {
                match result {
                    ReadMoved::Moved { seq, cursor } => {
                        assert_eq!(seq, entry.seq);
                        moves.push((cursor, seq));
                    }
                    ReadMoved::NotAhead { seq } => assert!(seq >= entry.seq, "{seq} is behind {}", entry.seq),
                    other => panic!("round {round}: a racing read ended otherwise: {other:?}"),
                }
            }
        }
        let last = sent.last().unwrap();
        let ben_member = member(storage, &id, &ben).await.unwrap();
        assert_eq!((ben_member.read_seq, ben_member.last_read_message_id), (last.seq, Some(last.id.clone())));
        // Ben's stream: his Joined notice, then exactly one Read notice per move, at the
        // positions the moves returned, each further than the one before.
        moves.sort();
        let stream = whole_stream(storage, &ben, 7).await;
        assert_eq!(positions(&stream), (1..=moves.len() as u64 + 1).collect::<Vec<_>>(), "round {round}");
        let expected: Vec<StreamItem> = moves
            .iter()
            .map(|(cursor, seq)| notice_at(cursor.position(), read(&id, &sent[(*seq - 2) as usize])))
            .collect();
        assert_eq!(stream[1..], expected, "round {round}");
        assert!(
            moves.windows(2).all(|w| w[0].1 < w[1].1),
            "round {round}: each move goes further: {moves:?}"
        );
        assert_eq!(moves.last().map(|m| m.1), Some(last.seq));
    }
}

// ---------------------------------------------------------------------------------------------
// Streams with notices, and a user's groups along their stream

async fn stream_merges_direct_messages_and_notices_at_consecutive_positions(storage: &Storage) {
    let (ann, ben, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let d1 = send(storage, &ann, &ben, "d1").await;
    let group = create_group(storage, &cat, &[&ann]).await.group.id;
    let d2 = send(storage, &ben, &ann, "d2").await;
    let direct = d2.conversation_id.clone();
    assert!(matches!(
        storage.messages.mark_read(&direct, &ann.id, &d2.id).await.unwrap(),
        ReadMoved::Moved { .. }
    ));
    let g2 = group_send(storage, &group, &cat, "g2").await;
    assert!(matches!(
        storage.messages.mark_read(&group, &ann.id, &g2.id).await.unwrap(),
        ReadMoved::Moved { .. }
    ));
    let removed = remove_members(storage, &group, &cat, &[&ann]).await;
    let d3 = send(storage, &ann, &cat, "d3").await;

    let expected = vec![
        message_at(1, &d1),
        notice_at(2, joined(&group, 1)),
        message_at(3, &d2),
        notice_at(4, read(&direct, &d2)),
        notice_at(5, read(&group, &g2)),
        notice_at(6, left(&group, removed.seq)),
        message_at(7, &d3),
    ];
    assert_eq!(storage.messages.stream(&ann.id, Cursor::START, 50).await.unwrap(), expected);
    assert_eq!(head(storage, &ann).await, cursor(7));
    for after in 0..=8 {
        for limit in [0, 1, 2, 3, 50] {
            let page = storage.messages.stream(&ann.id, cursor(after), limit).await.unwrap();
            let from = (after as usize).min(expected.len());
            let to = (from + limit as usize).min(expected.len());
            assert_eq!(page, expected[from..to], "after {after}, limit {limit}");
        }
    }
    assert_eq!(whole_stream(storage, &ann, 2).await, expected);
    // Cat's stream holds her Joined notice only (her sends and changes take no position).
    assert_eq!(
        storage.messages.stream(&cat.id, Cursor::START, 50).await.unwrap(),
        [notice_at(1, joined(&group, 1)), message_at(2, &d3)]
    );
}

async fn groups_at_and_left_after_follow_joining_leaving_and_joining_again(storage: &Storage) {
    let (ann, bob, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "bob").await,
        insert_user(storage, "cat").await,
    );
    let g1 = create_group(storage, &ann, &[&bob]).await.group.id; // bob 1: joined g1 at 1
    send(storage, &cat, &bob, "hi").await; // bob 2
    let g2 = create_group(storage, &cat, &[&bob]).await; // bob 3: joined g2 at 1
    remove_members(storage, &g1, &ann, &[&bob]).await; // bob 4: left g1 at 2
    group_send(storage, &g1, &ann, "without bob").await; // g1 seq 3
    add_members(storage, &g1, &ann, &[&bob]).await; // bob 5: joined g1 at 4
    let moved = storage.messages.mark_read(&g2.group.id, &bob.id, &g2.entry.id).await.unwrap(); // bob 6
    assert_eq!(moved, ReadMoved::Moved { seq: 1, cursor: cursor(6) });
    group_send(storage, &g2.group.id, &cat, "g2").await; // g2 seq 2
    remove_members(storage, &g2.group.id, &bob, &[&bob]).await; // bob 7: left g2 at 3
    group_send(storage, &g1, &ann, "with bob again").await; // g1 seq 5
    let g2 = g2.group.id;
    assert_eq!(head(storage, &bob).await, cursor(7));

    let position = |group: &ConversationId, joined_seq: Seq| GroupPosition {
        group: group.clone(),
        joined_seq,
        last_seq: if group == &g1 { 5 } else { 3 },
    };
    let by_id = |mut positions: Vec<GroupPosition>| {
        positions.sort_by(|x, y| x.group.cmp(&y.group));
        positions
    };
    let cases: [(u64, Vec<GroupPosition>); 9] = [
        (0, vec![]),
        (1, vec![position(&g1, 1)]),
        (2, vec![position(&g1, 1)]),
        (3, by_id(vec![position(&g1, 1), position(&g2, 1)])),
        (4, vec![position(&g2, 1)]),
        (5, by_id(vec![position(&g1, 4), position(&g2, 1)])),
        (6, by_id(vec![position(&g1, 4), position(&g2, 1)])),
        (7, vec![position(&g1, 4)]),
        (100, vec![position(&g1, 4)]),
    ];
    for (at, expected) in cases {
        assert_eq!(storage.groups.groups_at(&bob.id, cursor(at)).await.unwrap(), expected, "at {at}");
    }
    let left_after = |group: &ConversationId, user: &User, after: u64| {
        let (group, user) = (group.clone(), user.id.clone());
        async move { storage.groups.left_after(&user, &group, cursor(after)).await.unwrap() }
    };
    for (after, expected) in [(0, Some(2)), (1, Some(2)), (3, Some(2)), (4, None), (5, None), (100, None)] {
        assert_eq!(left_after(&g1, &bob, after).await, expected, "g1 after {after}");
    }
    for (after, expected) in [(0, Some(3)), (3, Some(3)), (6, Some(3)), (7, None)] {
        assert_eq!(left_after(&g2, &bob, after).await, expected, "g2 after {after}");
    }
    assert_eq!(left_after(&g1, &ann, 0).await, None, "a member who never left");
    assert_eq!(left_after(&g2, &ann, 0).await, None, "never a member");
    assert_eq!(
        storage.groups.groups_at(&ann.id, head(storage, &ann).await).await.unwrap(),
        [position(&g1, 1)]
    );

    // Where a connection starting now stands: the head and the groups there, read at once.
    let at_head = |user: &User| {
        let user = user.id.clone();
        async move { storage.groups.groups_at_head(&user).await.unwrap() }
    };
    assert_eq!(at_head(&bob).await, (cursor(7), vec![position(&g1, 4)]));
    assert_eq!(at_head(&ann).await, (head(storage, &ann).await, vec![position(&g1, 1)]));
    assert_eq!(at_head(&cat).await, (head(storage, &cat).await, vec![position(&g2, 1)]));
    let dan = insert_user(storage, "dan").await;
    assert_eq!(at_head(&dan).await, (Cursor::START, vec![]), "an empty stream");
    send(storage, &cat, &dan, "hi").await;
    assert_eq!(at_head(&dan).await, (cursor(1), vec![]), "in no group");
}

// ---------------------------------------------------------------------------------------------
// Conversation lists and members of both kinds

async fn direct_conversations_have_seqs_and_both_users_as_members(storage: &Storage) {
    let (ann, ben, cat, dan) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
    );
    let t0 = at_millis(1_700_000_000_000);
    let conversation = conversation_between(storage, &ann, &ben, t0).await;
    assert_eq!(conversation.last_seq, 0);
    assert_eq!(
        storage.conversations.find(&conversation.id).await.unwrap(),
        Some(Chat::Direct(conversation.clone()))
    );
    let unread_member = |user: &User, at: Timestamp| Member {
        read_seq: 0,
        ..Member::joining(user.id.clone(), Role::Member, at, 1)
    };
    assert_eq!(member(storage, &conversation.id, &ann).await, Some(unread_member(&ann, t0)));
    assert_eq!(member(storage, &conversation.id, &ben).await, Some(unread_member(&ben, t0)));
    assert_eq!(member(storage, &conversation.id, &cat).await, None);

    let mut sent = Vec::new();
    for (i, (from, to)) in [(&ann, &ben), (&ben, &ann), (&ann, &ben)].into_iter().enumerate() {
        sent.push(
            send_at(storage, from, to, &format!("m{i}"), t0 + Duration::seconds(i as i64)).await.message,
        );
    }
    assert_eq!(seqs(&sent), [1, 2, 3]);
    let stored = Conversation { last_seq: 3, updated_at: t0 + Duration::seconds(2), ..conversation.clone() };
    assert_eq!(
        storage.conversations.find_by_participants(&pair(&ann, &ben)).await.unwrap(),
        Some(stored.clone())
    );
    assert_eq!(
        storage.conversations.find(&conversation.id).await.unwrap(),
        Some(Chat::Direct(stored.clone()))
    );
    assert_eq!(
        storage.conversations.page(&pair(&ann, &ben), None, 1).await.unwrap().unwrap().conversation,
        stored
    );
    let read_up_to = |user: &User, entry: &Message| Member {
        read_seq: entry.seq,
        last_read_message_id: Some(entry.id.clone()),
        ..unread_member(user, t0)
    };
    assert_eq!(member(storage, &conversation.id, &ann).await, Some(read_up_to(&ann, &sent[2])));
    assert_eq!(member(storage, &conversation.id, &ben).await, Some(read_up_to(&ben, &sent[1])));
    assert_eq!(all_entries(storage, &conversation.id).await, sent);

    // A first message stores the conversation with both members, the sender's message read.
    let (candidate, message) = draft(&cat, &dan, "first", t0);
    let first = created(storage.messages.append(&candidate, &message).await.unwrap()).message;
    assert_eq!(member(storage, &candidate.id, &cat).await, Some(read_up_to(&cat, &first)));
    assert_eq!(member(storage, &candidate.id, &dan).await, Some(unread_member(&dan, candidate.created_at)));
    assert_eq!(storage.groups.state(&candidate.id).await.unwrap(), None);
}

async fn page_for_user_lists_direct_conversations_and_groups_with_my_membership_and_unread(
    storage: &Storage,
) {
    let (me, ann, ben) = (
        insert_user(storage, "me_myself").await,
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
    );
    let t0 = at_millis(1_700_000_000_000);
    let at = |seconds: i64| t0 + Duration::seconds(seconds);
    let with_ben = conversation_between(storage, &me, &ben, t0).await.id;
    send_at(storage, &ann, &me, "a1", at(1)).await;
    send_at(storage, &me, &ann, "a2", at(2)).await;
    let with_ann = send_at(storage, &ann, &me, "a3", at(3)).await.message.conversation_id;
    let group = create_group_at(storage, &ann, &[&me, &ben], "Team", at(4)).await.group.id;
    let bens = group_append(storage, &group_draft(&group, &ben, "hello all", at(5))).await.0;
    let mine = create_group_at(storage, &me, &[&ben], "Mine", at(6)).await.group.id;
    group_append(storage, &group_draft(&mine, &ben, "old news", at(0))).await;

    // Each summary: the conversation as `find` reads it, its last entry and my membership.
    let check = |expected: Vec<(ConversationId, u64)>| {
        let me = me.clone();
        async move {
            let listed = storage.conversations.list_for_user(&me.id).await.unwrap();
            assert_eq!(
                conversation_ids(&listed),
                expected.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
            );
            for (summary, (id, unread)) in listed.iter().zip(&expected) {
                assert_eq!(
                    Some(&summary.conversation),
                    storage.conversations.find(id).await.unwrap().as_ref()
                );
                assert_eq!(
                    Some(&summary.me),
                    storage.conversations.member(id, &me.id).await.unwrap().as_ref()
                );
                let last = all_entries(storage, id).await.into_iter().max_by(|x, y| x.id.cmp(&y.id));
                assert_eq!(summary.last_message, last, "the entry with the greatest id");
                assert_eq!(summary.unread(), *unread, "unread in {id}");
                assert_eq!(summary.unread(), summary.conversation.last_seq() - summary.me.read_seq);
            }
            for page in [1, 2, 3] {
                assert_eq!(walk_conversations(storage, &me, page).await, listed, "pages of {page}");
            }
            listed
        }
    };
    // Mine: created by me at 6 (read), then a message dated 0 (unread, updatedAt stays).
    // The group: its first entry and Ben's message unread. With Ann: her last message
    // after mine. With Ben: nothing yet.
    let listed =
        check(vec![(mine.clone(), 1), (group.clone(), 2), (with_ann.clone(), 1), (with_ben.clone(), 0)])
            .await;
    assert_eq!(listed[1].me.role, Role::Member);
    assert_eq!(listed[0].me.role, Role::Owner);
    assert_eq!(listed[3].last_message, None);

    assert!(matches!(
        storage.messages.mark_read(&group, &me.id, &bens.id).await.unwrap(),
        ReadMoved::Moved { .. }
    ));
    check(vec![(mine.clone(), 1), (group.clone(), 0), (with_ann.clone(), 1), (with_ben.clone(), 0)]).await;
    // A direct message, a group message, a group change: each moves its conversation first.
    send_at(storage, &ben, &me, "b1", at(7)).await;
    check(vec![(with_ben.clone(), 1), (mine.clone(), 1), (group.clone(), 0), (with_ann.clone(), 1)]).await;
    group_append(storage, &group_draft(&group, &ann, "news", at(8))).await;
    check(vec![(group.clone(), 1), (with_ben.clone(), 1), (mine.clone(), 1), (with_ann.clone(), 1)]).await;
    let renamed = SystemEvent::Renamed { actor: ben.id.clone(), name: group_name("Mine too") };
    let rename = GroupChange {
        rename: Some(group_name("Mine too")),
        ..change(1, system_entry(&mine, &ben, renamed, at(9)))
    };
    apply(storage, &mine, rename).await;
    let listed =
        check(vec![(mine.clone(), 2), (group.clone(), 1), (with_ben.clone(), 1), (with_ann.clone(), 1)])
            .await;
    assert!(listed[0].last_message.as_ref().is_some_and(|m| m.system.is_some()));
    // My own message moves my read position: nothing of mine is unread.
    group_append(storage, &group_draft(&mine, &me, "read it all", at(10))).await;
    check(vec![(mine.clone(), 0), (group.clone(), 1), (with_ben.clone(), 1), (with_ann.clone(), 1)]).await;

    // Removed from the group: it leaves my list, not Ben's.
    let removed = SystemEvent::Removed { actor: ann.id.clone(), users: vec![me.id.clone()] };
    let version = group_state(storage, &group).await.version;
    let remove = GroupChange {
        remove: vec![me.id.clone()],
        ..change(version, system_entry(&group, &ann, removed, at(11)))
    };
    apply(storage, &group, remove).await;
    check(vec![(mine.clone(), 0), (with_ben.clone(), 1), (with_ann.clone(), 1)]).await;
    let bens_list = storage.conversations.list_for_user(&ben.id).await.unwrap();
    assert_eq!(conversation_ids(&bens_list), [group.clone(), mine.clone(), with_ben.clone()]);
    assert_eq!(bens_list[0].unread(), 2, "ann's news and my removal");
}

async fn members_preview_gives_each_groups_first_members_and_count_in_the_order_asked(storage: &Storage) {
    // Ids are time-ordered: Eve and Fay, who join last, have the smallest ids.
    let (eve, fay) = (&insert_user(storage, "eve").await, &insert_user(storage, "fay").await);
    let (ann, ben) = (&insert_user(storage, "ann").await, &insert_user(storage, "ben").await);
    let (cat, dan) = (&insert_user(storage, "cat").await, &insert_user(storage, "dan").await);
    let g1 = create_group(storage, ann, &[ben, cat, dan]).await.group.id;
    add_members(storage, &g1, ann, &[eve, fay]).await;
    let g2 = create_group(storage, ben, &[ann]).await.group.id;
    let order = |group: &ConversationId| {
        let group = group.clone();
        async move {
            group_state(storage, &group).await.members.into_iter().map(|m| m.user_id).collect::<Vec<_>>()
        }
    };
    let (g1_members, g2_members) = (order(&g1).await, order(&g2).await);
    assert_eq!(g1_members.len(), 6);
    let first_four: HashSet<&UserId> = [&ann.id, &ben.id, &cat.id, &dan.id].into_iter().collect();
    assert_eq!(g1_members[..4].iter().collect::<HashSet<_>>(), first_four, "by joining order, not by id");
    assert!(g1_members[..4].windows(2).all(|w| w[0] < w[1]) && g1_members[4] < g1_members[5], "ties by id");
    assert_eq!(g1_members[4..].iter().collect::<HashSet<_>>(), [&eve.id, &fay.id].into_iter().collect());
    let preview = |group: &ConversationId, members: &[UserId], count: u64| MembersPreview {
        group: group.clone(),
        members: members.to_vec(),
        count,
    };

    let previews = storage.groups.members_preview(&[g2.clone(), g1.clone()], 3).await.unwrap();
    assert_eq!(previews, [preview(&g2, &g2_members, 2), preview(&g1, &g1_members[..3], 6)]);
    let previews = storage.groups.members_preview(&[g1.clone(), g2.clone()], 10).await.unwrap();
    assert_eq!(previews, [preview(&g1, &g1_members, 6), preview(&g2, &g2_members, 2)]);
    assert_eq!(
        storage.groups.members_preview(std::slice::from_ref(&g1), 0).await.unwrap(),
        [preview(&g1, &[], 6)]
    );
    assert_eq!(storage.groups.members_preview(&[], 3).await.unwrap(), []);
    remove_members(storage, &g1, ann, &[cat]).await;
    let without_cat: Vec<UserId> = g1_members.iter().filter(|id| **id != cat.id).cloned().collect();
    assert_eq!(
        storage.groups.members_preview(std::slice::from_ref(&g1), 100).await.unwrap(),
        [preview(&g1, &without_cat, 5)]
    );
}

// ---------------------------------------------------------------------------------------------
// Groups under concurrency

async fn concurrent_group_sends_take_every_seq_once_and_a_reader_never_sees_a_hole(storage: &Storage) {
    const WRITERS: usize = 8;
    const SENDS: usize = 25;
    const TOTAL: usize = 1 + WRITERS * SENDS;
    let owner = insert_user(storage, "owner").await;
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        writers.push(insert_user(storage, &format!("writer{i}")).await);
    }
    let created = create_group(storage, &owner, &writers.iter().collect::<Vec<_>>()).await;
    let id = created.group.id.clone();

    // A reader follows the group while the writers run, always after the last seq it saw.
    let messages = Arc::clone(&storage.messages);
    let reader_group = id.clone();
    let reader = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut seen: Vec<Message> = Vec::new();
        while seen.len() < TOTAL {
            assert!(started.elapsed() < PATIENCE, "the reader saw {} of {TOTAL} entries", seen.len());
            let after = seen.last().map_or(0, |m| m.seq);
            let page =
                messages_of(messages.entries(&reader_group, after, None, 7).await.expect("reading entries"));
            assert!(page.len() <= 7);
            assert_eq!(seqs(&page), (after + 1..after + 1 + page.len() as u64).collect::<Vec<_>>(), "a hole");
            if page.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            seen.extend(page);
        }
        seen
    });

    let tasks: Vec<_> = writers
        .iter()
        .enumerate()
        .map(|(i, writer)| {
            let messages = Arc::clone(&storage.messages);
            let (id, writer) = (id.clone(), writer.clone());
            tokio::spawn(async move {
                let mut stored = Vec::new();
                for j in 0..SENDS {
                    let mut message = group_draft(&id, &writer, &format!("w{i}-{j}"), now());
                    message.client_id = if j % 2 == 0 { client_id(&format!("k{i}-{j}")) } else { None };
                    let (message, version) = match messages.append_to_group(&message).await.expect("a send") {
                        GroupAppended::Created { message, version } => (message, version),
                        other => panic!("a concurrent send ended otherwise: {other:?}"),
                    };
                    assert_eq!(version, 1);
                    // Once stored, the entry is readable at its seq, and so is every seq before.
                    let after = message.seq.saturating_sub(4);
                    let window =
                        messages_of(messages.entries(&id, after, Some(message.seq), 10).await.unwrap());
                    assert_eq!(
                        seqs(&window),
                        (after + 1..=message.seq).collect::<Vec<_>>(),
                        "right after a send"
                    );
                    assert_eq!(window.last(), Some(&message));
                    stored.push(message);
                }
                stored
            })
        })
        .collect();
    let mut stored = vec![created.entry];
    for task in tasks {
        stored.extend(tokio::time::timeout(PATIENCE, task).await.expect("the writers finish").unwrap());
    }
    let seen = tokio::time::timeout(PATIENCE, reader).await.expect("the reader finishes").unwrap();
    stored.sort_by_key(|m| m.seq);
    assert_eq!(seqs(&stored), (1..=TOTAL as u64).collect::<Vec<_>>(), "every seq once");
    assert_eq!(all_entries(storage, &id).await, stored);
    assert_eq!(seen, stored, "what the reader saw is the final history");
    let state = group_state(storage, &id).await;
    assert_eq!((state.group.last_seq, state.version), (TOTAL as u64, 1));
    for writer in &writers {
        let last = stored.iter().filter(|m| m.sender_id == writer.id).map(|m| m.seq).max();
        assert_eq!(state.member(&writer.id).map(|m| m.read_seq), last, "{}", writer.username.as_str());
    }
}

async fn a_send_racing_a_removal_is_stored_before_it_or_refused(storage: &Storage) {
    for round in 0..3 {
        let ann = insert_user(storage, &format!("owner{round}")).await;
        let bob = insert_user(storage, &format!("removed{round}")).await;
        let cat = insert_user(storage, &format!("stays{round}")).await;
        let id = create_group(storage, &ann, &[&bob, &cat]).await.group.id;

        // Bob sends until he is refused; Cat sends all along.
        let spawn_sender = |user: &User, stop_when_refused: bool| {
            let messages = Arc::clone(&storage.messages);
            let (id, user) = (id.clone(), user.clone());
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let mut results = Vec::new();
                for j in 0..5000 {
                    assert!(started.elapsed() < PATIENCE, "no refusal came");
                    let draft = group_draft(&id, &user, &format!("s{j}"), now());
                    let result = messages.append_to_group(&draft).await.expect("a send");
                    let refused = result == GroupAppended::NotMember;
                    results.push(result);
                    if (stop_when_refused && refused) || (!stop_when_refused && j == 60) {
                        return results;
                    }
                    // Paced, so that a fast store does not run far ahead of the removal.
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                assert!(!stop_when_refused, "5000 sends and no refusal");
                results
            })
        };
        let bobs = spawn_sender(&bob, true);
        let cats = spawn_sender(&cat, false);
        // Remove Bob once a few messages are in.
        let started = std::time::Instant::now();
        while group_state(storage, &id).await.group.last_seq < 8 {
            assert!(started.elapsed() < PATIENCE, "the senders are stuck");
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let removed = remove_members(storage, &id, &ann, &[&bob]).await;
        let after_removal =
            storage.messages.append_to_group(&group_draft(&id, &bob, "late", now())).await.unwrap();
        assert_eq!(after_removal, GroupAppended::NotMember, "a send after the removal committed");

        let bobs = tokio::time::timeout(PATIENCE, bobs).await.expect("bob's sends finish").unwrap();
        let cats = tokio::time::timeout(PATIENCE, cats).await.expect("cat's sends finish").unwrap();
        let (refusal, stored) = bobs.split_last().expect("at least one send");
        assert_eq!(*refusal, GroupAppended::NotMember);
        let bobs_seqs: Vec<Seq> = stored
            .iter()
            .map(|result| match result {
                GroupAppended::Created { message, .. } => message.seq,
                other => panic!("round {round}: refused before the end: {other:?}"),
            })
            .collect();
        assert!(
            bobs_seqs.iter().all(|seq| *seq < removed.seq),
            "round {round}: {bobs_seqs:?} after {}",
            removed.seq
        );
        assert!(cats.iter().all(|r| matches!(r, GroupAppended::Created { .. })));

        // What Bob's devices read: up to his Left entry, every message he stored among it.
        assert_eq!(
            storage.messages.stream(&bob.id, Cursor::START, 50).await.unwrap(),
            [notice_at(1, joined(&id, 1)), notice_at(2, left(&id, removed.seq))]
        );
        let until = storage.groups.left_after(&bob.id, &id, cursor(1)).await.unwrap();
        assert_eq!(until, Some(removed.seq));
        let visible = messages_of(storage.messages.entries(&id, 0, until, 10_000).await.unwrap());
        assert_eq!(seqs(&visible), (1..=removed.seq).collect::<Vec<_>>(), "round {round}");
        assert_eq!(visible.last(), Some(&removed));
        let visible_bobs: Vec<Seq> =
            visible.iter().filter(|m| m.sender_id == bob.id && m.system.is_none()).map(|m| m.seq).collect();
        assert_eq!(visible_bobs, bobs_seqs, "round {round}");
        let everything = all_entries(storage, &id).await;
        assert!(everything[removed.seq as usize..].iter().all(|m| m.sender_id != bob.id), "round {round}");
        assert_eq!(storage.groups.groups_at(&bob.id, cursor(2)).await.unwrap(), []);
    }
}

async fn concurrent_sends_reads_and_group_changes_keep_every_stream_gap_free(storage: &Storage) {
    const WRITERS: usize = 4;
    const SENDS: usize = 20;
    const GROUPS: usize = 10;
    let hub = insert_user(storage, "hub").await;
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        writers.push(insert_user(storage, &format!("writer{i}")).await);
    }
    // A reader follows the hub's stream while it grows, always after the last position it
    // saw, until the writers are done and it has caught up.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (messages, hub_id, done) = (Arc::clone(&storage.messages), hub.id.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut seen: Vec<StreamItem> = Vec::new();
            loop {
                assert!(started.elapsed() < PATIENCE, "the reader is stuck at {} items", seen.len());
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let after = seen.last().map_or(Cursor::START, |item| item.cursor);
                let page = messages.stream(&hub_id, after, 7).await.expect("reading the stream");
                let expected: Vec<u64> =
                    (after.position() + 1..=after.position() + page.len() as u64).collect();
                assert_eq!(positions(&page), expected, "a stream read skipped a position");
                if page.is_empty() {
                    if finished {
                        return seen;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                seen.extend(page);
            }
        })
    };
    // Direct messages to the hub, groups created with and changed around the hub, and the
    // hub's reads, all at once: every one of them takes the hub's next position.
    let mut tasks = Vec::new();
    for (i, writer) in writers.iter().enumerate() {
        let messages = Arc::clone(&storage.messages);
        let (hub, writer) = (hub.clone(), writer.clone());
        tasks.push(tokio::spawn(async move {
            let mut moved = 0;
            for j in 0..SENDS {
                let (candidate, message) = draft(&writer, &hub, &format!("w{i}-{j}"), now());
                let stored = created(messages.append(&candidate, &message).await.expect("a direct send"));
                if j % 4 == 0 {
                    let read =
                        messages.mark_read(&stored.message.conversation_id, &hub.id, &stored.message.id);
                    if let ReadMoved::Moved { .. } = read.await.expect("a read") {
                        moved += 1;
                    }
                }
            }
            moved
        }));
    }
    let groups = Arc::clone(&storage.groups);
    let (hub_id, owner) = (hub.id.clone(), writers[0].clone());
    let changes = tokio::spawn(async move {
        for _ in 0..GROUPS {
            let at = now();
            let group = Group {
                id: ConversationId::generate(),
                name: group_name("Busy"),
                created_by: owner.id.clone(),
                created_at: at,
                updated_at: at,
                last_seq: 1,
            };
            let event = SystemEvent::Created {
                actor: owner.id.clone(),
                name: group.name.clone(),
                members: vec![owner.id.clone(), hub_id.clone()],
            };
            let entry = system_entry(&group.id, &owner, event, at);
            let members = [
                Member {
                    last_read_message_id: Some(entry.id.clone()),
                    ..Member::joining(owner.id.clone(), Role::Owner, at, 1)
                },
                Member { read_seq: 0, ..Member::joining(hub_id.clone(), Role::Member, at, 1) },
            ];
            groups.create(&group, &members, &entry).await.expect("creating a group");
            let removed = SystemEvent::Removed { actor: owner.id.clone(), users: vec![hub_id.clone()] };
            let remove = GroupChange {
                remove: vec![hub_id.clone()],
                ..change(1, system_entry(&group.id, &owner, removed, now()))
            };
            applied(groups.change(&group.id, &remove).await.expect("removing"));
        }
    });
    let mut moved = 0;
    for task in tasks {
        moved += tokio::time::timeout(PATIENCE, task).await.expect("the writers finish").unwrap();
    }
    tokio::time::timeout(PATIENCE, changes).await.expect("the changes finish").unwrap();
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = tokio::time::timeout(PATIENCE, reader).await.expect("the reader finishes").unwrap();

    let stream = whole_stream(storage, &hub, 9).await;
    assert_eq!(seen, stream, "what the reader saw while the stream grew is the final stream");
    let expected_len = WRITERS * SENDS + 2 * GROUPS + moved;
    assert_eq!(positions(&stream), (1..=expected_len as u64).collect::<Vec<_>>());
    assert_eq!(head(storage, &hub).await, cursor(expected_len as u64));
    let count = |f: fn(&StreamEntry) -> bool| stream.iter().filter(|item| f(&item.entry)).count();
    assert_eq!(count(|e| matches!(e, StreamEntry::Message(_))), WRITERS * SENDS);
    assert_eq!(count(|e| matches!(e, StreamEntry::Notice(Notice::Joined { .. }))), GROUPS);
    assert_eq!(count(|e| matches!(e, StreamEntry::Notice(Notice::Left { .. }))), GROUPS);
    assert_eq!(count(|e| matches!(e, StreamEntry::Notice(Notice::Read { .. }))), moved);
    for writer in &writers {
        let theirs = whole_stream(storage, writer, 50).await;
        assert_eq!(positions(&theirs), (1..=theirs.len() as u64).collect::<Vec<_>>());
    }
}

async fn concurrent_changes_at_one_version_apply_exactly_one(storage: &Storage) {
    const RACERS: usize = 8;
    for round in 0..3 {
        let owner = insert_user(storage, &format!("owner{round}")).await;
        let mut candidates = Vec::new();
        for i in 0..RACERS {
            candidates.push(insert_user(storage, &format!("candidate{round}x{i}")).await);
        }
        let created = create_group(storage, &owner, &[]).await;
        let id = created.group.id.clone();
        // Every admin decides on version 1 to add someone else: one wins, the rest must decide again.
        let tasks: Vec<_> = candidates
            .iter()
            .map(|candidate| {
                let groups = Arc::clone(&storage.groups);
                let event = SystemEvent::Added { actor: owner.id.clone(), users: vec![candidate.id.clone()] };
                let add = GroupChange {
                    add: vec![(candidate.id.clone(), Role::Member)],
                    ..change(1, system_entry(&id, &owner, event, now()))
                };
                let id = id.clone();
                tokio::spawn(async move { (add.add[0].0.clone(), groups.change(&id, &add).await) })
            })
            .collect();
        let mut winners = Vec::new();
        for task in tasks {
            match tokio::time::timeout(PATIENCE, task).await.expect("the changes finish").unwrap() {
                (user, Ok(Changed::Applied { entry, version, notices })) => {
                    winners.push((user, entry, version, notices))
                }
                (_, Ok(Changed::Stale)) => {}
                (_, Err(error)) => panic!("round {round}: a racing change failed: {error:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}");
        let (user, entry, version, notices) = winners.pop().unwrap();
        assert_eq!((entry.seq, version), (2, 2));
        assert_eq!(notices, [Noticed { user: user.clone(), cursor: cursor(1), notice: joined(&id, 2) }]);
        let state = group_state(storage, &id).await;
        assert_eq!((state.version, state.group.last_seq), (2, 2));
        let members: Vec<UserId> = state.members.iter().map(|m| m.user_id.clone()).collect();
        assert_eq!(members, [owner.id.clone(), user.clone()]);
        assert_eq!(all_entries(storage, &id).await, [created.entry, entry]);
        for candidate in &candidates {
            let expected = if candidate.id == user { cursor(1) } else { Cursor::START };
            assert_eq!(head(storage, candidate).await, expected, "round {round}: only the winner's notice");
        }
    }
}

async fn concurrent_direct_and_group_sends_with_one_client_id_store_one_message(storage: &Storage) {
    for round in 0..3 {
        let a = insert_user(storage, &format!("sender{round}")).await;
        let b = insert_user(storage, &format!("receiver{round}")).await;
        let id = create_group(storage, &a, &[&b]).await.group.id;
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let messages = Arc::clone(&storage.messages);
                let (candidate, mut direct) = draft(&a, &b, "only once", now());
                direct.client_id = client_id("shared-key");
                let mut to_group = group_draft(&id, &a, "only once", now());
                to_group.client_id = client_id("shared-key");
                tokio::spawn(async move {
                    // (the stored message's id, whether this call stored it)
                    if i % 2 == 0 {
                        match messages.append(&candidate, &direct).await.expect("a direct send") {
                            Appended::Created(stored) => (stored.message.id, true),
                            Appended::Existing(earlier) => (earlier.message.id, false),
                        }
                    } else {
                        match messages.append_to_group(&to_group).await.expect("a group send") {
                            GroupAppended::Created { message, .. } => (message.id, true),
                            GroupAppended::Existing(earlier) => (earlier.id, false),
                            GroupAppended::NotMember => panic!("the sender is a member"),
                        }
                    }
                })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(tokio::time::timeout(PATIENCE, task).await.expect("the sends finish").unwrap());
        }
        let winners: Vec<&MessageId> =
            results.iter().filter(|(_, stored)| *stored).map(|(id, _)| id).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        assert!(results.iter().all(|(id, _)| id == winners[0]), "round {round}: {results:?}");
        let stored = history(storage, &a, &b).await.len() + all_entries(storage, &id).await.len() - 1;
        assert_eq!(stored, 1, "round {round}: one message in all");
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
