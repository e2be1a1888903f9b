//! The storage contract of message changes: edits, deletions, reactions (the
//! `MessageChangeRepository` port) and what they do to every read of a message — history,
//! entries, streams, the conversation list and its unread counts — and replies, whose quote
//! follows the message they answer.
//!
//! Every change goes through [`change_checked`], which decides what the store must answer the
//! way the reference does (`MessageState::apply` on the message as `find` reads it, with the
//! actor's role), and checks what a change takes (the next seq, a position in each user's
//! stream of a direct conversation) and what an unstored one leaves alone.

use domain::{
    Actor, Applied, Change, ChangeError, ChangeKind, Content, EditWindow, Emoji, MessageChange, QuoteText,
    ReactionError, Reactions, ReplyQuote, Tombstone,
};

use application::ports::{
    ChangeOutcome, ChangeRequest, MessageChangeRepository, MessageRepository, StoredChange, StreamPosition,
    Update,
};

use super::*;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// The store's message changes.
fn changes(storage: &Storage) -> Arc<dyn MessageChangeRepository> {
    storage.changes.clone()
}

fn body(raw: &str) -> MessageBody {
    MessageBody::parse(raw).expect("a valid body")
}

fn emoji(raw: &str) -> Emoji {
    Emoji::parse(raw).expect("an emoji")
}

/// `actor`'s request for `change` of `message`, now, with the default edit window.
fn request(message: &Message, actor: &User, change: Change) -> ChangeRequest {
    ChangeRequest {
        conversation: message.conversation_id.clone(),
        message: message.id.clone(),
        actor: actor.id.clone(),
        change,
        at: now(),
        window: EditWindow::default(),
    }
}

async fn find(storage: &Storage, id: &MessageId) -> Message {
    changes(storage).find(id).await.expect("finding a message").expect("the message exists")
}

async fn chat(storage: &Storage, id: &ConversationId) -> Chat {
    storage.conversations.find(id).await.unwrap().expect("the conversation exists")
}

/// The users whose streams a change of the conversation may touch: both users of a direct
/// conversation, a group's members.
async fn users_of(storage: &Storage, conversation: &ConversationId) -> Vec<UserId> {
    match storage.conversations.find(conversation).await.unwrap() {
        Some(Chat::Direct(direct)) => {
            vec![direct.participants.first().clone(), direct.participants.second().clone()]
        }
        Some(Chat::Group(_)) => {
            group_state(storage, conversation).await.members.into_iter().map(|m| m.user_id).collect()
        }
        None => Vec::new(),
    }
}

async fn heads_of(storage: &Storage, users: &[UserId]) -> Vec<Cursor> {
    let mut heads = Vec::new();
    for user in users {
        heads.push(storage.messages.stream_head(user).await.unwrap());
    }
    heads
}

async fn members_of(
    storage: &Storage,
    conversation: &ConversationId,
    users: &[UserId],
) -> Vec<Option<Member>> {
    let mut members = Vec::new();
    for user in users {
        members.push(storage.conversations.member(conversation, user).await.unwrap());
    }
    members
}

/// Asks the store for `request` and checks its answer against the reference decision on the
/// state `find` reads just before: `NotMember` without a membership, `NotFound` for a message
/// of another conversation or from before the actor joined, else what `MessageState::apply`
/// decides with the actor's role. A change is stored at the conversation's next seq, with the
/// message as `apply` left it (`version` = that seq), in a direct conversation at the next
/// position of the sender's and then the receiver's stream, in a group at its membership
/// version; it moves no read position and no `updated_at`. Anything else stores nothing: no
/// seq, no position, the message as it was.
async fn change_checked(storage: &Storage, request: &ChangeRequest) -> ChangeOutcome {
    let repo = changes(storage);
    let before = repo.find(&request.message).await.expect("finding a message");
    let conversation = storage.conversations.find(&request.conversation).await.unwrap();
    let member = storage.conversations.member(&request.conversation, &request.actor).await.unwrap();
    let users = users_of(storage, &request.conversation).await;
    let heads = heads_of(storage, &users).await;
    let members = members_of(storage, &request.conversation, &users).await;
    let group_version = match &conversation {
        Some(Chat::Group(_)) => group_state(storage, &request.conversation).await.version,
        _ => 0,
    };

    let outcome = repo.change(request).await.expect("changing a message");

    let expected = match (&member, &before) {
        (None, _) => ChangeOutcome::NotMember,
        (Some(member), Some(message))
            if message.conversation_id == request.conversation && message.seq >= member.joined_seq =>
        {
            let mut state = message.state();
            let actor = Actor { user: request.actor.clone(), role: member.role };
            match state.apply(&actor, &request.change, request.window, request.at) {
                Err(refused) => ChangeOutcome::Refused(refused),
                Ok(Applied::Unchanged) => ChangeOutcome::Unchanged(message.clone()),
                Ok(Applied::Changed(kind)) => {
                    let conversation = conversation.as_ref().expect("a member's conversation exists");
                    let seq = conversation.last_seq() + 1;
                    state.version = seq;
                    let change = MessageChange {
                        conversation_id: request.conversation.clone(),
                        message_id: request.message.clone(),
                        actor: request.actor.clone(),
                        kind,
                        at: request.at,
                        seq,
                    };
                    let message = message.clone().with_state(state);
                    let positions = match &message.receiver_id {
                        Some(receiver) => [&message.sender_id, receiver]
                            .into_iter()
                            .map(|user| {
                                let at = users.iter().position(|u| u == user).expect("a participant");
                                StreamPosition { user: user.clone(), cursor: heads[at].next() }
                            })
                            .collect(),
                        None => Vec::new(),
                    };
                    let update = Update { change, message };
                    ChangeOutcome::Changed(StoredChange { update, positions, version: group_version })
                }
            }
        }
        (Some(_), _) => ChangeOutcome::NotFound,
    };
    assert_eq!(outcome, expected, "{request:?}");
    let stored = match expected {
        ChangeOutcome::Changed(stored) => Some(stored),
        _ => None,
    };

    // What the change took, and what it left alone.
    let after = storage.conversations.find(&request.conversation).await.unwrap();
    let expected_heads: Vec<Cursor> = users
        .iter()
        .zip(&heads)
        .map(|(user, head)| match &stored {
            Some(stored) if stored.positions.iter().any(|p| &p.user == user) => head.next(),
            _ => *head,
        })
        .collect();
    assert_eq!(heads_of(storage, &users).await, expected_heads, "stream heads after {request:?}");
    assert_eq!(members_of(storage, &request.conversation, &users).await, members, "no read position moves");
    match (&conversation, &after) {
        (Some(before), Some(after)) => {
            let taken = u64::from(stored.is_some());
            assert_eq!(after.last_seq(), before.last_seq() + taken, "last seq after {request:?}");
            assert_eq!(after.updated_at(), before.updated_at(), "a change does not move updated_at");
        }
        (before, after) => assert_eq!(before, after),
    }
    let now_found = repo.find(&request.message).await.unwrap();
    match &stored {
        Some(stored) => assert_eq!(now_found.as_ref(), Some(&stored.update.message)),
        None => assert_eq!(now_found, before, "nothing stored"),
    }
    outcome
}

/// `actor` asks for `change` of `message`; checked as [`change_checked`] does.
async fn ask(storage: &Storage, message: &Message, actor: &User, change: Change) -> ChangeOutcome {
    change_checked(storage, &request(message, actor, change)).await
}

fn stored(outcome: ChangeOutcome) -> StoredChange {
    match outcome {
        ChangeOutcome::Changed(stored) => stored,
        other => panic!("expected a stored change, got {other:?}"),
    }
}

fn unchanged(outcome: ChangeOutcome) -> Message {
    match outcome {
        ChangeOutcome::Unchanged(message) => message,
        other => panic!("expected no change, got {other:?}"),
    }
}

fn refused(outcome: ChangeOutcome) -> ChangeError {
    match outcome {
        ChangeOutcome::Refused(refused) => refused,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Every stream entry of `user`, read in pages of `page`.
async fn stream_of(storage: &Storage, user: &UserId, page: u32) -> Vec<StreamItem> {
    let mut items: Vec<StreamItem> = Vec::new();
    loop {
        let after = items.last().map_or(Cursor::START, |item| item.cursor);
        let next = storage.messages.stream(user, after, page).await.unwrap();
        if next.is_empty() {
            return items;
        }
        assert_eq!(
            positions(&next),
            (after.position() + 1..=after.position() + next.len() as u64).collect::<Vec<_>>()
        );
        items.extend(next);
    }
}

/// Every entry of the conversation (messages and changes), by seq.
async fn every_entry(storage: &Storage, conversation: &ConversationId) -> Vec<GroupEntry> {
    storage.messages.entries(conversation, 0, None, 10_000).await.unwrap()
}

/// The message `id` as `find` reads it, after checking that every other read of it gives the
/// same: history, the conversation page, entries (the message and every change entry of it),
/// the streams of the conversation's users (likewise) and their conversation lists.
async fn every_read(storage: &Storage, id: &MessageId) -> Message {
    let found = find(storage, id).await;
    let conversation = found.conversation_id.clone();
    let mut copies: Vec<(String, Message)> = Vec::new();
    let history = storage.messages.list_by_conversation(&conversation, 0, None, 10_000).await.unwrap();
    copies.extend(history.into_iter().filter(|m| &m.id == id).map(|m| ("history".to_owned(), m)));
    for entry in every_entry(storage, &conversation).await {
        match entry {
            GroupEntry::Message(m) if &m.id == id => copies.push(("entries".to_owned(), m)),
            GroupEntry::Update(u) if &u.message.id == id => {
                copies.push((format!("the change entry at seq {}", u.change.seq), u.message))
            }
            _ => {}
        }
    }
    if let Chat::Direct(direct) = chat(storage, &conversation).await {
        let page = storage.conversations.page(&direct.participants, None, 10_000).await.unwrap();
        let page = page.expect("the pair's conversation").messages;
        copies.extend(page.into_iter().filter(|m| &m.id == id).map(|m| ("conversation page".to_owned(), m)));
    }
    for user in users_of(storage, &conversation).await {
        for item in stream_of(storage, &user, 50).await {
            match item.entry {
                StreamEntry::Message(m) if &m.id == id => copies.push((format!("{user}'s stream"), m)),
                StreamEntry::Update(u) if &u.message.id == id => {
                    copies.push((format!("{user}'s stream at {}", item.cursor), u.message))
                }
                _ => {}
            }
        }
        for summary in storage.conversations.list_for_user(&user).await.unwrap() {
            if let Some(last) = summary.last_message.filter(|m| &m.id == id) {
                copies.push((format!("{user}'s conversation list"), last));
            }
        }
    }
    assert!(copies.len() >= 2, "the message is read back");
    for (read, copy) in copies {
        assert_eq!(copy, found, "{read} reads the message as it stands");
    }
    found
}

/// The reactions of a message as `(emoji, users)` in their order; empty for a tombstone.
fn reactions_of(message: &Message) -> Vec<(String, Vec<UserId>)> {
    match message.content() {
        Content::Live { reactions, .. } => {
            reactions.iter().map(|(emoji, users)| (emoji.as_str().to_owned(), users.to_vec())).collect()
        }
        Content::Deleted(_) => Vec::new(),
    }
}

/// `user`'s unread count of `conversation`, the same in the whole list and in a page of it.
async fn unread(storage: &Storage, user: &User, conversation: &ConversationId) -> u64 {
    let listed = storage.conversations.list_for_user(&user.id).await.unwrap();
    let paged = storage.conversations.page_for_user(&user.id, None, 500).await.unwrap();
    assert_eq!(listed, paged);
    let summary = listed.into_iter().find(|s| s.conversation.id() == conversation).expect("in the list");
    summary.unread()
}

/// `message` as a reply to `original`, quoting it as the send use case does.
fn quoting(message: Message, original: &Message) -> Message {
    Message { reply_to: Some(ReplyQuote::of(original, &original.content())), ..message }
}

fn excerpt_of(message: &Message) -> Option<QuoteText> {
    message.reply_to.as_ref().map(|quote| quote.text.clone())
}

fn excerpt(text: &str, truncated: bool) -> Option<QuoteText> {
    Some(QuoteText::Excerpt { text: text.to_owned(), truncated })
}

/// Makes `user` a group admin (or back a member), at the group's current version.
async fn set_role(storage: &Storage, group: &ConversationId, actor: &User, user: &User, role: Role) {
    let version = group_state(storage, group).await.version;
    let event = SystemEvent::RoleChanged { actor: actor.id.clone(), user: user.id.clone(), role };
    let roles = vec![(user.id.clone(), role)];
    apply(storage, group, GroupChange { roles, ..change(version, system_entry(group, actor, event, now())) })
        .await;
}

// ---------------------------------------------------------------------------------------------
// Edits

pub(super) async fn message_change_edit_takes_the_next_seq_and_both_streams_and_reads_back_everywhere(
    storage: &Storage,
) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let t0 = now() - Duration::minutes(5);
    let first = send_at(storage, &ann, &ben, "hello", t0).await.message;
    let second = send_at(storage, &ben, &ann, "hi ann", t0 + Duration::seconds(1)).await.message;
    let id = first.conversation_id.clone();
    assert_eq!(changes(storage).find(&MessageId::generate()).await.unwrap(), None);
    assert_eq!(find(storage, &first.id).await, first, "never changed: as sent");

    let at = now();
    let edit = ChangeRequest { at, ..request(&first, &ann, Change::Edit(body("hello, edited"))) };
    let stored = stored(change_checked(storage, &edit).await);
    let edited = stored.update.message.clone();
    assert_eq!(stored.update.change.seq, 3);
    assert_eq!(stored.update.change.kind, ChangeKind::Edited);
    assert_eq!((edited.text(), &edited.body), (Some(&body("hello, edited")), &body("hello, edited")));
    assert_eq!((edited.seq, edited.version(), edited.created_at), (1, 3, t0));
    assert!(matches!(edited.content(), Content::Live { edited_at: Some(e), .. } if e == at));
    assert_eq!(
        stored.positions,
        [
            StreamPosition { user: ann.id.clone(), cursor: cursor(3) },
            StreamPosition { user: ben.id.clone(), cursor: cursor(3) }
        ]
    );
    assert_eq!(stored.version, 0);

    assert_eq!(every_read(storage, &first.id).await, edited);
    assert_eq!(history(storage, &ann, &ben).await, [edited.clone(), second.clone()], "messages only");
    let update = GroupEntry::Update(stored.update.clone());
    assert_eq!(
        every_entry(storage, &id).await,
        [GroupEntry::Message(edited.clone()), GroupEntry::Message(second.clone()), update]
    );
    let item = StreamItem { cursor: cursor(3), entry: StreamEntry::Update(stored.update.clone()) };
    for user in [&ann, &ben] {
        let stream = storage.messages.stream(&user.id, Cursor::START, 50).await.unwrap();
        assert_eq!(stream, [message_at(1, &edited), message_at(2, &second), item.clone()]);
    }
    // Not counted as unread: Ben's message is Ann's only unread entry, Ben has none.
    assert_eq!((unread(storage, &ann, &id).await, unread(storage, &ben, &id).await), (1, 0));

    // Edited again: the earlier change entry now reads the message as it stands.
    let again = stored_edit(storage, &first, &ann, "hello, again").await;
    assert_eq!((again.update.change.seq, again.update.message.version()), (4, 4));
    assert_eq!(again.positions.iter().map(|p| p.cursor).collect::<Vec<_>>(), [cursor(4), cursor(4)]);
    let current = every_read(storage, &first.id).await;
    assert_eq!(current.text(), Some(&body("hello, again")));
    let entries = every_entry(storage, &id).await;
    assert_eq!(entries.iter().map(GroupEntry::seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(
        matches!(&entries[2], GroupEntry::Update(u) if u.change == stored.update.change && u.message == current)
    );
}

async fn stored_edit(storage: &Storage, message: &Message, actor: &User, text: &str) -> StoredChange {
    stored(ask(storage, message, actor, Change::Edit(body(text))).await)
}

pub(super) async fn message_change_in_a_group_takes_the_groups_next_seq_and_no_stream_position(
    storage: &Storage,
) {
    let (ann, ben, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let created = create_group(storage, &ann, &[&ben]).await;
    let id = created.group.id.clone();
    add_members(storage, &id, &ann, &[&cat]).await;
    let hi = group_send(storage, &id, &ben, "hi all").await;
    assert_eq!(hi.seq, 3);
    let version = group_state(storage, &id).await.version;
    assert_eq!(version, 2);

    let reacted = stored(ask(storage, &hi, &ann, Change::React(emoji("👍"))).await);
    assert_eq!((reacted.update.change.seq, reacted.positions.len(), reacted.version), (4, 0, version));
    assert_eq!(reactions_of(&reacted.update.message), [("👍".to_owned(), vec![ann.id.clone()])]);
    let edited = stored_edit(storage, &hi, &ben, "hi all!").await;
    assert_eq!((edited.update.change.seq, edited.positions.len()), (5, 0));
    let current = every_read(storage, &hi.id).await;
    assert_eq!(current.text(), Some(&body("hi all!")));
    assert_eq!(reactions_of(&current), [("👍".to_owned(), vec![ann.id.clone()])], "an edit keeps reactions");
    assert_eq!(
        every_entry(storage, &id).await.iter().map(GroupEntry::seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    let history = storage.messages.list_by_conversation(&id, 1, None, 50).await.unwrap();
    assert_eq!(seqs(&history), [1, 2, 3], "history holds messages only");
    assert_eq!(history[2], current);
    assert_eq!(group_state(storage, &id).await.group.last_seq, 5);
    for user in [&ann, &ben, &cat] {
        let stream = storage.messages.stream(&user.id, Cursor::START, 50).await.unwrap();
        let joined_at = if user.id == cat.id { 2 } else { 1 };
        assert_eq!(
            stream,
            [notice_at(1, joined(&id, joined_at))],
            "a group's changes take no stream position"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Idempotency

pub(super) async fn message_change_made_already_is_unchanged_and_takes_no_seq(storage: &Storage) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let message = send(storage, &ann, &ben, "hello").await;

    stored_edit(storage, &message, &ann, "hello!").await;
    let same = unchanged(ask(storage, &message, &ann, Change::Edit(body("hello!"))).await);
    assert_eq!(same.text(), Some(&body("hello!")));

    stored(ask(storage, &message, &ben, Change::React(emoji("❤️"))).await);
    for spelling in ["❤️", "❤", ":heart:"] {
        let same = unchanged(ask(storage, &message, &ben, Change::React(emoji(spelling))).await);
        assert_eq!(
            reactions_of(&same),
            [(emoji("❤️").as_str().to_owned(), vec![ben.id.clone()])],
            "{spelling}"
        );
    }
    stored(ask(storage, &message, &ben, Change::Unreact(emoji("❤"))).await);
    unchanged(ask(storage, &message, &ben, Change::Unreact(emoji("❤️"))).await);
    unchanged(ask(storage, &message, &ann, Change::Unreact(emoji("👍"))).await);

    stored(ask(storage, &message, &ben, Change::React(emoji("👍"))).await);
    stored(ask(storage, &message, &ann, Change::Delete).await);
    let tombstone = unchanged(ask(storage, &message, &ann, Change::Delete).await);
    assert_eq!(tombstone.text(), None);
    unchanged(ask(storage, &message, &ben, Change::Unreact(emoji("👍"))).await);
    assert_eq!(chat(storage, &message.conversation_id).await.last_seq(), 6, "one message, five changes");
    assert_eq!(head(storage, &ann).await, cursor(6));
    assert_eq!(head(storage, &ben).await, cursor(6));

    // In a group too.
    let group = create_group(storage, &ann, &[&ben]).await.group.id;
    let posted = group_send(storage, &group, &ben, "in the group").await;
    stored(ask(storage, &posted, &ann, Change::React(emoji("🎉"))).await);
    unchanged(ask(storage, &posted, &ann, Change::React(emoji("🎉"))).await);
    stored(ask(storage, &posted, &ann, Change::Delete).await);
    unchanged(ask(storage, &posted, &ben, Change::Delete).await);
    assert_eq!(group_state(storage, &group).await.group.last_seq, 4);
}

// ---------------------------------------------------------------------------------------------
// Deletion

pub(super) async fn message_change_deletion_leaves_a_tombstone_without_text_or_reactions_in_every_read(
    storage: &Storage,
) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let secret = send(storage, &ann, &ben, "the secret plans").await;
    stored(ask(storage, &secret, &ben, Change::React(emoji("👍"))).await);
    let (candidate, reply) = draft(&ben, &ann, "noted", now());
    let reply = quoting(reply, &secret);
    let reply = created(storage.messages.append(&candidate, &reply).await.unwrap()).message;
    assert_eq!(excerpt_of(&every_read(storage, &reply.id).await), excerpt("the secret plans", false));

    let at = now();
    let deleted = stored(
        change_checked(storage, &ChangeRequest { at, ..request(&secret, &ann, Change::Delete) }).await,
    );
    assert_eq!(deleted.update.change.kind, ChangeKind::Deleted);
    let tombstone = every_read(storage, &secret.id).await;
    assert_eq!(
        tombstone.content(),
        Content::Deleted(Tombstone { deleted_at: at, deleted_by: ann.id.clone() })
    );
    assert_eq!((tombstone.text(), tombstone.body.as_str()), (None, MessageBody::WITHDRAWN));
    assert_eq!(
        (tombstone.seq, tombstone.created_at, &tombstone.sender_id),
        (secret.seq, secret.created_at, &ann.id)
    );
    assert_eq!(reactions_of(&tombstone), []);
    assert_eq!(excerpt_of(&every_read(storage, &reply.id).await), Some(QuoteText::Deleted));

    // Ben deletes his reply, the conversation's last message: the list shows its tombstone.
    stored(ask(storage, &reply, &ben, Change::Delete).await);
    assert_eq!(every_read(storage, &reply.id).await.text(), None);
    let listed = storage.conversations.list_for_user(&ann.id).await.unwrap();
    assert_eq!(listed[0].last_message.as_ref().map(|m| (&m.id, m.text())), Some((&reply.id, None)));

    // The text is gone from every read.
    let conversation = secret.conversation_id.clone();
    let reads = format!(
        "{:?} {:?} {:?} {:?} {:?} {:?} {:?}",
        history(storage, &ann, &ben).await,
        every_entry(storage, &conversation).await,
        stream_of(storage, &ann.id, 50).await,
        stream_of(storage, &ben.id, 50).await,
        storage.conversations.list_for_user(&ben.id).await.unwrap(),
        storage.conversations.page(&pair(&ann, &ben), None, 50).await.unwrap(),
        changes(storage).find(&secret.id).await.unwrap(),
    );
    assert!(!reads.contains("secret") && !reads.contains("noted"), "{reads}");

    // In a group: an admin deletes a member's message, the last one of the group.
    let cat = insert_user(storage, "cat").await;
    let group = create_group(storage, &cat, &[&ann, &ben]).await.group.id;
    let posted = group_send(storage, &group, &ben, "another secret").await;
    stored(ask(storage, &posted, &ann, Change::React(emoji("🎉"))).await);
    let by_owner = stored(ask(storage, &posted, &cat, Change::Delete).await);
    assert!(matches!(by_owner.update.message.content(), Content::Deleted(t) if t.deleted_by == cat.id));
    assert_eq!(every_read(storage, &posted.id).await.text(), None);
    let reads = format!(
        "{:?} {:?} {:?}",
        every_entry(storage, &group).await,
        storage.messages.list_by_conversation(&group, 0, None, 50).await.unwrap(),
        storage.conversations.list_for_user(&ann.id).await.unwrap(),
    );
    assert!(!reads.contains("secret"), "{reads}");
}

// ---------------------------------------------------------------------------------------------
// Who may change what

pub(super) async fn message_change_refusals_follow_the_rules_on_the_state_under_the_lock(storage: &Storage) {
    let (ann, ben, cat, dan) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
    );
    // Direct: the other user edits or deletes nothing of mine.
    let mine = send(storage, &ann, &ben, "mine").await;
    assert_eq!(refused(ask(storage, &mine, &ben, Change::Edit(body("yours"))).await), ChangeError::NotSender);
    assert_eq!(refused(ask(storage, &mine, &ben, Change::Delete).await), ChangeError::MayNotDelete);

    // A group: Ann owns it, Ben is an admin, Cat and Dan are members.
    let created = create_group(storage, &ann, &[&ben, &cat, &dan]).await;
    let id = created.group.id.clone();
    set_role(storage, &id, &ann, &ben, Role::Admin).await;
    let cats = [
        group_send(storage, &id, &cat, "cat 1").await,
        group_send(storage, &id, &cat, "cat 2").await,
        group_send(storage, &id, &cat, "cat 3").await,
    ];
    let dans = group_send(storage, &id, &dan, "dan 1").await;
    for user in [&ann, &ben, &dan] {
        let edit = ask(storage, &cats[0], user, Change::Edit(body("not mine"))).await;
        assert_eq!(refused(edit), ChangeError::NotSender, "{}", user.username.as_str());
    }
    assert_eq!(refused(ask(storage, &dans, &cat, Change::Delete).await), ChangeError::MayNotDelete);
    stored(ask(storage, &cats[0], &ben, Change::Delete).await);
    stored(ask(storage, &dans, &ann, Change::Delete).await);
    // Demoted, Ben deletes no one else's message any more.
    set_role(storage, &id, &ann, &ben, Role::Member).await;
    assert_eq!(refused(ask(storage, &cats[1], &ben, Change::Delete).await), ChangeError::MayNotDelete);

    // System entries take no change.
    for change in
        [Change::Edit(body("x")), Change::Delete, Change::React(emoji("👍")), Change::Unreact(emoji("👍"))]
    {
        assert_eq!(refused(ask(storage, &created.entry, &ann, change).await), ChangeError::SystemEntry);
    }

    // A deleted message is edited and reacted to no more.
    assert_eq!(refused(ask(storage, &cats[0], &cat, Change::Edit(body("back"))).await), ChangeError::Deleted);
    assert_eq!(refused(ask(storage, &cats[0], &dan, Change::React(emoji("👍"))).await), ChangeError::Deleted);
    unchanged(ask(storage, &cats[0], &dan, Change::Unreact(emoji("👍"))).await);

    // The edit window counts from the message's `created_at`.
    let sent = now() - Duration::hours(25);
    let old = group_append(storage, &group_draft(&id, &cat, "old", sent)).await.0;
    let late = ask(storage, &old, &cat, Change::Edit(body("too late"))).await;
    assert_eq!(refused(late), ChangeError::EditWindowClosed { closed_at: sent + Duration::hours(24) });
    unchanged(ask(storage, &old, &cat, Change::Edit(body("old"))).await);
    let hour = ChangeRequest {
        window: EditWindow::from_secs(3600),
        ..request(&cats[1], &cat, Change::Edit(body("fine")))
    };
    stored(change_checked(storage, &hour).await);
    let forever =
        ChangeRequest { window: EditWindow::forever(), ..request(&old, &cat, Change::Edit(body("forever"))) };
    stored(change_checked(storage, &forever).await);

    // Twenty distinct emoji at most; one used already is always fine.
    let all: Vec<Emoji> =
        "😀😃😄😁😆😅🤣😂🙂🙃😉😊😇🥰😍🤩😘😗😚😙😋".chars().map(|c| emoji(&c.to_string())).collect();
    assert_eq!(all.len(), Reactions::MAX_EMOJI + 1);
    for e in &all[..Reactions::MAX_EMOJI] {
        stored(ask(storage, &cats[2], &dan, Change::React(e.clone())).await);
    }
    let too_many = ask(storage, &cats[2], &ben, Change::React(all[Reactions::MAX_EMOJI].clone())).await;
    let max = Reactions::MAX_EMOJI;
    assert_eq!(refused(too_many), ChangeError::Reaction(ReactionError::TooManyEmoji { max }));
    stored(ask(storage, &cats[2], &ben, Change::React(all[0].clone())).await);
    stored(ask(storage, &cats[2], &dan, Change::Unreact(all[5].clone())).await);
    stored(ask(storage, &cats[2], &ben, Change::React(all[Reactions::MAX_EMOJI].clone())).await);
    assert_eq!(reactions_of(&every_read(storage, &cats[2].id).await).len(), Reactions::MAX_EMOJI);
}

pub(super) async fn message_change_by_a_non_member_is_not_member_and_of_a_message_out_of_sight_not_found(
    storage: &Storage,
) {
    let (ann, ben, cat, dan, eve) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
        insert_user(storage, "dan").await,
        insert_user(storage, "eve").await,
    );
    let direct = send(storage, &ann, &ben, "between us").await;
    let created = create_group(storage, &ann, &[&ben, &cat]).await;
    let id = created.group.id.clone();
    let early = group_send(storage, &id, &ben, "early").await;

    // Strangers, removed members, and a conversation nobody has.
    for message in [&direct, &early] {
        assert_eq!(ask(storage, message, &eve, Change::React(emoji("👍"))).await, ChangeOutcome::NotMember);
    }
    remove_members(storage, &id, &ann, &[&cat]).await;
    assert_eq!(ask(storage, &early, &cat, Change::React(emoji("👍"))).await, ChangeOutcome::NotMember);
    let elsewhere =
        ChangeRequest { conversation: ConversationId::generate(), ..request(&early, &ann, Change::Delete) };
    assert_eq!(change_checked(storage, &elsewhere).await, ChangeOutcome::NotMember);

    // A message of another conversation, an unknown one, one from before joining.
    let other =
        ChangeRequest { conversation: id.clone(), ..request(&direct, &ann, Change::React(emoji("👍"))) };
    assert_eq!(change_checked(storage, &other).await, ChangeOutcome::NotFound);
    let unknown = ChangeRequest { message: MessageId::generate(), ..request(&early, &ann, Change::Delete) };
    assert_eq!(change_checked(storage, &unknown).await, ChangeOutcome::NotFound);
    let joining = add_members(storage, &id, &ann, &[&dan]).await;
    for change in [Change::React(emoji("👍")), Change::Unreact(emoji("👍")), Change::Delete] {
        assert_eq!(ask(storage, &early, &dan, change).await, ChangeOutcome::NotFound);
    }
    assert_eq!(ask(storage, &created.entry, &dan, Change::React(emoji("👍"))).await, ChangeOutcome::NotFound);
    // From the entry that added them on, they see it all.
    let entry = ask(storage, &joining, &dan, Change::React(emoji("👍"))).await;
    assert_eq!(refused(entry), ChangeError::SystemEntry);
    let later = group_send(storage, &id, &ann, "later").await;
    stored(ask(storage, &later, &dan, Change::React(emoji("👍"))).await);
    assert_eq!(every_read(storage, &early.id).await.changed, None, "never changed");
}

// ---------------------------------------------------------------------------------------------
// Replies

pub(super) async fn message_reply_quotes_the_original_as_it_stands_in_every_read(storage: &Storage) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let original = send(storage, &ann, &ben, "  the original  ").await;
    let (candidate, reply) = draft(&ben, &ann, "a reply", now());
    let reply = Message { client_id: client_id("reply-1"), ..quoting(reply, &original) };
    let sent = created(storage.messages.append(&candidate, &reply).await.unwrap()).message;
    let quote = ReplyQuote {
        message_id: original.id.clone(),
        sender_id: ann.id.clone(),
        text: QuoteText::Excerpt { text: "the original".to_owned(), truncated: false },
    };
    assert_eq!(sent.reply_to.as_ref(), Some(&quote));
    assert_eq!(every_read(storage, &sent.id).await, sent);
    assert_eq!(every_read(storage, &original.id).await.reply_to, None);

    // The quote follows the original's edits, in every read and in a retried send.
    let long = "x".repeat(150);
    stored_edit(storage, &original, &ann, &long).await;
    let current = every_read(storage, &sent.id).await;
    assert_eq!(excerpt_of(&current), excerpt(&"x".repeat(ReplyQuote::GRAPHEMES), true));
    assert_eq!(
        current.reply_to.as_ref().map(|q| (&q.message_id, &q.sender_id)),
        Some((&original.id, &ann.id))
    );
    assert_eq!(current.changed, None, "the reply itself never changed");
    let retried = existing(storage.messages.append(&candidate, &reply).await.unwrap());
    assert_eq!(retried.message, current);
    // A change of the reply keeps its quote.
    stored(ask(storage, &sent, &ann, Change::React(emoji("👍"))).await);
    assert_eq!(excerpt_of(&every_read(storage, &sent.id).await), excerpt_of(&current));
    stored(ask(storage, &original, &ann, Change::Delete).await);
    assert_eq!(excerpt_of(&every_read(storage, &sent.id).await), Some(QuoteText::Deleted));
    assert_eq!(
        excerpt_of(&existing(storage.messages.append(&candidate, &reply).await.unwrap()).message),
        Some(QuoteText::Deleted)
    );

    // In a group.
    let id = create_group(storage, &ann, &[&ben]).await.group.id;
    let first = group_send(storage, &id, &ann, "first").await;
    let answer = group_draft(&id, &ben, "second", now());
    let answer = Message { client_id: client_id("reply-2"), ..quoting(answer, &first) };
    let answer = group_append(storage, &answer).await.0;
    assert_eq!(excerpt_of(&every_read(storage, &answer.id).await), excerpt("first", false));
    stored_edit(storage, &first, &ann, "first, edited").await;
    assert_eq!(excerpt_of(&every_read(storage, &answer.id).await), excerpt("first, edited", false));
    let again = group_draft(&id, &ben, "second", now());
    let again = Message { client_id: client_id("reply-2"), reply_to: answer.reply_to.clone(), ..again };
    match storage.messages.append_to_group(&again).await.unwrap() {
        GroupAppended::Existing(earlier) => assert_eq!(earlier, find(storage, &answer.id).await),
        other => panic!("expected the earlier message, got {other:?}"),
    }
    stored(ask(storage, &first, &ann, Change::Delete).await);
    assert_eq!(excerpt_of(&every_read(storage, &answer.id).await), Some(QuoteText::Deleted));
}

// ---------------------------------------------------------------------------------------------
// Unread counts and the conversation list

pub(super) async fn conversation_unread_counts_messages_after_my_read_position_that_are_not_deleted(
    storage: &Storage,
) {
    let (me, ann, ben) = (
        insert_user(storage, "me_myself").await,
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
    );
    let group = create_group(storage, &ann, &[&me]).await.group.id;
    let a1 = group_send(storage, &group, &ann, "a1").await;
    let a2 = group_send(storage, &group, &ann, "a2").await;
    assert_eq!(unread(storage, &me, &group).await, 3, "the first entry and two messages");
    storage.messages.mark_read(&group, &me.id, &a2.id).await.unwrap();
    let a3 = group_send(storage, &group, &ann, "a3").await;
    let a4 = group_send(storage, &group, &ann, "a4").await;
    let a5 = group_send(storage, &group, &ann, "a5").await;
    assert_eq!(unread(storage, &me, &group).await, 3);
    let b1 = send(storage, &ben, &me, "b1").await;
    let b2 = send(storage, &ben, &me, "b2").await;
    let direct = b1.conversation_id.clone();
    let order = conversation_ids(&storage.conversations.list_for_user(&me.id).await.unwrap());
    assert_eq!(order, [direct.clone(), group.clone()]);

    let steps: [(&Message, &User, Change, u64); 6] = [
        (&a4, &me, Change::React(emoji("👍")), 3),
        (&a3, &ann, Change::Edit(body("a3, edited")), 3),
        (&a1, &ann, Change::React(emoji("🎉")), 3),
        (&a4, &ann, Change::Delete, 2),
        (&a1, &ann, Change::Delete, 2),
        (&a5, &me, Change::React(emoji("👀")), 2),
    ];
    for (message, actor, change, expected) in steps {
        let label = format!("{change:?} of {}", message.body.as_str());
        stored(ask(storage, message, actor, change).await);
        assert_eq!(unread(storage, &me, &group).await, expected, "{label}");
        assert_eq!(unread(storage, &ann, &group).await, 0, "{label}");
    }
    // A change of an older conversation's message does not move it up the list.
    let listed = storage.conversations.list_for_user(&me.id).await.unwrap();
    assert_eq!(conversation_ids(&listed), order);
    assert_eq!(listed[1].me.read_seq, a2.seq, "my changes do not move my read position");

    storage.messages.mark_read(&group, &me.id, &a5.id).await.unwrap();
    assert_eq!(unread(storage, &me, &group).await, 0);
    stored(ask(storage, &a5, &ann, Change::Delete).await);
    assert_eq!(unread(storage, &me, &group).await, 0, "a deleted message I read");
    let a6 = group_send(storage, &group, &ann, "a6").await;
    assert_eq!(unread(storage, &me, &group).await, 1);
    stored(ask(storage, &a6, &ann, Change::Delete).await);
    assert_eq!(unread(storage, &me, &group).await, 0, "a deleted message I did not read");

    // A direct conversation: the same.
    assert_eq!(unread(storage, &me, &direct).await, 2);
    stored(ask(storage, &b2, &me, Change::React(emoji("👍"))).await);
    stored(ask(storage, &b1, &ben, Change::Edit(body("b1, edited"))).await);
    assert_eq!((unread(storage, &me, &direct).await, unread(storage, &ben, &direct).await), (2, 0));
    stored(ask(storage, &b1, &ben, Change::Delete).await);
    assert_eq!(unread(storage, &me, &direct).await, 1);
    assert_eq!(member(storage, &direct, &me).await.map(|m| m.read_seq), Some(0));
    storage.messages.mark_read(&direct, &me.id, &b2.id).await.unwrap();
    assert_eq!(unread(storage, &me, &direct).await, 0);
    let listed = storage.conversations.list_for_user(&me.id).await.unwrap();
    assert_eq!(
        conversation_ids(&listed),
        [group.clone(), direct.clone()],
        "a6 moved the group up, changes nothing"
    );
}

// ---------------------------------------------------------------------------------------------
// Reading change entries

pub(super) async fn entries_and_streams_merge_messages_and_change_entries_in_order(storage: &Storage) {
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let created = create_group(storage, &ann, &[&ben]).await;
    let id = created.group.id.clone();
    let m2 = group_send(storage, &id, &ann, "m2").await;
    stored(ask(storage, &m2, &ben, Change::React(emoji("👍"))).await);
    let m4 = group_send(storage, &id, &ben, "m4").await;
    stored_edit(storage, &m4, &ben, "m4, edited").await;
    stored(ask(storage, &m2, &ann, Change::Delete).await);
    let m7 = group_send(storage, &id, &ann, "m7").await;

    let all = every_entry(storage, &id).await;
    assert_eq!(all.iter().map(GroupEntry::seq).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6, 7]);
    let kinds: Vec<Option<&str>> = all
        .iter()
        .map(|entry| match entry {
            GroupEntry::Message(_) => None,
            GroupEntry::Update(update) => Some(update.change.kind.as_str()),
        })
        .collect();
    assert_eq!(kinds, [None, None, Some("reactionAdded"), None, Some("edited"), Some("deleted"), None]);
    let m2_now = find(storage, &m2.id).await;
    assert!(matches!(&all[2], GroupEntry::Update(u) if u.message == m2_now && u.change.actor == ben.id));
    assert_eq!(all[1], GroupEntry::Message(m2_now));
    for after in 0..=8 {
        for until in [None, Some(0), Some(3), Some(5), Some(7), Some(9)] {
            for limit in [0, 1, 2, 3, 50] {
                let page = storage.messages.entries(&id, after, until, limit).await.unwrap();
                let from = (after as usize).min(all.len());
                let to = until.map_or(all.len(), |u| (u as usize).min(all.len())).max(from);
                let to = to.min(from + limit as usize);
                assert_eq!(page, all[from..to], "after {after}, until {until:?}, limit {limit}");
            }
        }
    }
    let history = storage.messages.list_by_conversation(&id, 0, None, 50).await.unwrap();
    assert_eq!(seqs(&history), [1, 2, 4, 7]);
    assert_eq!(history[3], m7);

    // A direct conversation's changes in both streams, between its messages.
    let d1 = send(storage, &ann, &ben, "d1").await;
    stored(ask(storage, &d1, &ben, Change::React(emoji("🎉"))).await);
    let d2 = send(storage, &ben, &ann, "d2").await;
    let edit = stored_edit(storage, &d1, &ann, "d1, edited").await;
    assert_eq!(edit.update.change.seq, 4);
    for user in [&ann, &ben] {
        let whole = stream_of(storage, &user.id, 50).await;
        let shape: Vec<String> = whole
            .iter()
            .map(|item| match &item.entry {
                StreamEntry::Message(m) => format!("message {}", m.seq),
                StreamEntry::Update(u) => format!("{} {}", u.change.kind.as_str(), u.change.seq),
                StreamEntry::Notice(_) => "notice".to_owned(),
            })
            .collect();
        assert_eq!(shape, ["notice", "message 1", "reactionAdded 2", "message 3", "edited 4"]);
        for page in [1, 2, 3] {
            assert_eq!(stream_of(storage, &user.id, page).await, whole, "pages of {page}");
        }
        let d1_now = find(storage, &d1.id).await;
        assert!(matches!(&whole[2].entry, StreamEntry::Update(u) if u.message == d1_now));
        assert_eq!(whole[3], message_at(4, &d2));
    }
}

// ---------------------------------------------------------------------------------------------
// Under concurrency

/// Right after a change or a send is stored, its seq is readable, and so is every seq
/// before it.
async fn readable(messages: &dyn MessageRepository, conversation: &ConversationId, seq: Seq) {
    let after = seq.saturating_sub(4);
    let window = messages.entries(conversation, after, Some(seq), 10).await.unwrap();
    assert_eq!(window.iter().map(GroupEntry::seq).collect::<Vec<_>>(), (after + 1..=seq).collect::<Vec<_>>());
}

pub(super) async fn message_reactions_of_fifty_users_at_once_are_each_stored_once(storage: &Storage) {
    const USERS: usize = 50;
    let owner = insert_user(storage, "owner").await;
    let mut users = Vec::new();
    for i in 0..USERS {
        users.push(insert_user(storage, &format!("user{i}")).await);
    }
    let id = create_group(storage, &owner, &users.iter().collect::<Vec<_>>()).await.group.id;
    let message = group_send(storage, &id, &owner, "react to me").await;
    let thumbs = emoji("👍");

    let tasks: Vec<_> = users
        .iter()
        .map(|user| {
            let repo = changes(storage);
            let request = request(&message, user, Change::React(thumbs.clone()));
            let (messages, id) = (Arc::clone(&storage.messages), id.clone());
            tokio::spawn(async move {
                let outcome = repo.change(&request).await.expect("a reaction");
                if let ChangeOutcome::Changed(stored) = &outcome {
                    readable(messages.as_ref(), &id, stored.update.change.seq).await;
                }
                outcome
            })
        })
        .collect();
    let mut seqs_taken = Vec::new();
    for task in tasks {
        let outcome = tokio::time::timeout(PATIENCE, task).await.expect("the reactions finish").unwrap();
        let stored = stored(outcome);
        let (seq, message) = (stored.update.change.seq, &stored.update.message);
        assert_eq!(message.version(), seq);
        let Content::Live { reactions, .. } = message.content() else { panic!("deleted") };
        assert_eq!(reactions.count(&thumbs), seq - 2, "the message right after the change at {seq}");
        assert!(reactions.has(&stored.update.change.actor, &thumbs));
        seqs_taken.push(seq);
    }
    seqs_taken.sort_unstable();
    assert_eq!(seqs_taken, (3..3 + USERS as u64).collect::<Vec<_>>(), "consecutive seqs, each once");
    let current = every_read(storage, &message.id).await;
    let Content::Live { reactions, .. } = current.content() else { panic!("deleted") };
    assert_eq!(reactions.count(&thumbs), USERS as u64);
    let reacted: HashSet<&UserId> = reactions.users(&thumbs).unwrap_or_default().iter().collect();
    assert_eq!(reacted, users.iter().map(|u| &u.id).collect::<HashSet<_>>());
    assert_eq!(group_state(storage, &id).await.group.last_seq, 2 + USERS as u64);
    assert_eq!(current.version(), 2 + USERS as u64);
}

pub(super) async fn message_identical_changes_racing_store_exactly_one(storage: &Storage) {
    const RACERS: usize = 10;
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let message = send(storage, &ann, &ben, "hello").await;
    let rounds = [
        (&ann, Change::Edit(body("hello, once"))),
        (&ben, Change::React(emoji("👍"))),
        (&ben, Change::Unreact(emoji("👍"))),
        (&ann, Change::Delete),
    ];
    for (round, (actor, change)) in rounds.into_iter().enumerate() {
        let last_seq = chat(storage, &message.conversation_id).await.last_seq();
        let tasks: Vec<_> = (0..RACERS)
            .map(|_| {
                let repo = changes(storage);
                let request = request(&message, actor, change.clone());
                tokio::spawn(async move { repo.change(&request).await.expect("a change") })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(tokio::time::timeout(PATIENCE, task).await.expect("the changes finish").unwrap());
        }
        let current = find(storage, &message.id).await;
        let changed: Vec<&StoredChange> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                ChangeOutcome::Changed(stored) => Some(stored),
                _ => None,
            })
            .collect();
        assert_eq!(changed.len(), 1, "round {round}: {outcomes:?}");
        assert_eq!(changed[0].update.message, current, "round {round}");
        assert_eq!(changed[0].update.change.seq, last_seq + 1);
        for outcome in &outcomes {
            if !matches!(outcome, ChangeOutcome::Changed(_)) {
                assert_eq!(outcome, &ChangeOutcome::Unchanged(current.clone()), "round {round}");
            }
        }
        assert_eq!(chat(storage, &message.conversation_id).await.last_seq(), last_seq + 1);
        assert_eq!(head(storage, &ann).await, cursor(last_seq + 1));
        assert_eq!(head(storage, &ben).await, cursor(last_seq + 1));
    }
}

pub(super) async fn message_reactions_keep_the_order_emoji_were_first_used(storage: &Storage) {
    let (ann, ben, cat) = (
        insert_user(storage, "ann").await,
        insert_user(storage, "ben").await,
        insert_user(storage, "cat").await,
    );
    let id = create_group(storage, &ann, &[&ben, &cat]).await.group.id;
    let message = group_send(storage, &id, &ben, "react").await;
    let (party, thumbs, heart) = ("🎉", "👍", "❤️");
    for (user, e) in [(&cat, party), (&ann, thumbs), (&ben, party), (&cat, heart)] {
        stored(ask(storage, &message, user, Change::React(emoji(e))).await);
    }
    let expected = |order: &[(&str, &[&User])]| -> Vec<(String, Vec<UserId>)> {
        order
            .iter()
            .map(|(e, users)| (emoji(e).as_str().to_owned(), users.iter().map(|u| u.id.clone()).collect()))
            .collect()
    };
    assert_eq!(
        reactions_of(&every_read(storage, &message.id).await),
        expected(&[(party, &[&cat, &ben]), (thumbs, &[&ann]), (heart, &[&cat])])
    );
    stored(ask(storage, &message, &ann, Change::Unreact(emoji(thumbs))).await);
    stored(ask(storage, &message, &ben, Change::React(emoji(thumbs))).await);
    stored(ask(storage, &message, &ann, Change::React(emoji(heart))).await);
    assert_eq!(
        reactions_of(&every_read(storage, &message.id).await),
        expected(&[(party, &[&cat, &ben]), (heart, &[&cat, &ann]), (thumbs, &[&ben])]),
        "an emoji taken back by all and used again comes last"
    );
    stored_edit(storage, &message, &ben, "react, edited").await;
    assert_eq!(
        reactions_of(&every_read(storage, &message.id).await),
        expected(&[(party, &[&cat, &ben]), (heart, &[&cat, &ann]), (thumbs, &[&ben])]),
        "an edit keeps the reactions"
    );
    let other = group_send(storage, &id, &ben, "order").await;
    stored(ask(storage, &other, &cat, Change::React(emoji(party))).await);
    stored(ask(storage, &other, &ann, Change::React(emoji(thumbs))).await);
    stored(ask(storage, &other, &ben, Change::React(emoji(party))).await);
    stored(ask(storage, &other, &cat, Change::Unreact(emoji(party))).await);
    assert_eq!(
        reactions_of(&every_read(storage, &other.id).await),
        expected(&[(party, &[&ben]), (thumbs, &[&ann])]),
        "an emoji keeps its place while someone still uses it"
    );
}

pub(super) async fn concurrent_sends_and_changes_of_a_direct_conversation_leave_no_hole(storage: &Storage) {
    const EARLIER: usize = 10;
    const SENDS: usize = 15;
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let mut anns = Vec::new();
    let mut bens = Vec::new();
    for i in 0..EARLIER {
        anns.push(send(storage, &ann, &ben, &format!("a{i}")).await);
        bens.push(send(storage, &ben, &ann, &format!("b{i}")).await);
    }
    let id = anns[0].conversation_id.clone();
    // Both send, Ben reacts to Ann's messages while she edits them, Ann reacts to Ben's.
    let total = 2 * EARLIER + 2 * SENDS + 3 * EARLIER;

    let messages = Arc::clone(&storage.messages);
    let (reader_user, reader_conversation) = (ben.id.clone(), id.clone());
    let reader = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (mut position, mut seq) = (0, 0);
        while position < total as u64 || seq < total as u64 {
            assert!(
                started.elapsed() < PATIENCE,
                "the reader saw {position} positions, {seq} seqs of {total}"
            );
            let page = messages.stream(&reader_user, cursor(position), 7).await.expect("reading the stream");
            assert_eq!(positions(&page), (position + 1..=position + page.len() as u64).collect::<Vec<_>>());
            position += page.len() as u64;
            let entries =
                messages.entries(&reader_conversation, seq, None, 7).await.expect("reading entries");
            let seqs: Vec<Seq> = entries.iter().map(GroupEntry::seq).collect();
            assert_eq!(seqs, (seq + 1..=seq + entries.len() as u64).collect::<Vec<_>>(), "a hole");
            seq += entries.len() as u64;
            if page.is_empty() && entries.is_empty() {
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
    });

    let sender = |from: &User, to: &User| {
        let (messages, from, to, id) = (Arc::clone(&storage.messages), from.clone(), to.clone(), id.clone());
        tokio::spawn(async move {
            for j in 0..SENDS {
                let (candidate, message) =
                    draft(&from, &to, &format!("{}-{j}", from.username.as_str()), now());
                let stored = created(messages.append(&candidate, &message).await.expect("a send"));
                readable(messages.as_ref(), &id, stored.message.seq).await;
            }
        })
    };
    let changer = |targets: &[Message], actor: &User, change: fn(&Message) -> Change| {
        let (repo, messages, id) = (changes(storage), Arc::clone(&storage.messages), id.clone());
        let requests: Vec<ChangeRequest> = targets.iter().map(|m| request(m, actor, change(m))).collect();
        tokio::spawn(async move {
            for request in requests {
                let stored = stored(repo.change(&request).await.expect("a change"));
                readable(messages.as_ref(), &id, stored.update.change.seq).await;
                for position in &stored.positions {
                    let at = messages
                        .stream(&position.user, cursor(position.cursor.position() - 1), 1)
                        .await
                        .unwrap();
                    assert!(
                        matches!(&at[..], [StreamItem { entry: StreamEntry::Update(u), .. }] if u.change == stored.update.change)
                    );
                }
            }
        })
    };
    let tasks = [
        sender(&ann, &ben),
        sender(&ben, &ann),
        changer(&anns, &ben, |_| Change::React(emoji("👍"))),
        changer(&anns, &ann, |m| Change::Edit(body(&format!("{}, edited", m.body.as_str())))),
        changer(&bens, &ann, |_| Change::React(emoji("🎉"))),
    ];
    for task in tasks {
        tokio::time::timeout(PATIENCE, task).await.expect("the writers finish").unwrap();
    }
    tokio::time::timeout(PATIENCE, reader).await.expect("the reader finishes").unwrap();

    assert_eq!(chat(storage, &id).await.last_seq(), total as u64);
    for user in [&ann, &ben] {
        let stream = stream_of(storage, &user.id, 50).await;
        assert_eq!(positions(&stream), (1..=total as u64).collect::<Vec<_>>());
        let seqs: Vec<Seq> = stream
            .iter()
            .map(|item| match &item.entry {
                StreamEntry::Message(m) => m.seq,
                StreamEntry::Update(u) => u.change.seq,
                StreamEntry::Notice(n) => panic!("unexpected notice {n:?}"),
            })
            .collect();
        assert_eq!(
            seqs,
            (1..=total as u64).collect::<Vec<_>>(),
            "one conversation: its seqs in stream order"
        );
    }
    for (i, message) in anns.iter().enumerate() {
        let now = every_read(storage, &message.id).await;
        assert_eq!(now.text(), Some(&body(&format!("a{i}, edited"))));
        assert_eq!(reactions_of(&now), [(emoji("👍").as_str().to_owned(), vec![ben.id.clone()])]);
    }
    for message in &bens {
        assert_eq!(
            reactions_of(&find(storage, &message.id).await),
            [(emoji("🎉").as_str().to_owned(), vec![ann.id.clone()])]
        );
    }
}

pub(super) async fn message_different_edits_racing_end_on_the_text_of_the_last_one_stored(storage: &Storage) {
    const RACERS: usize = 10;
    let (ann, ben) = (insert_user(storage, "ann").await, insert_user(storage, "ben").await);
    let message = send(storage, &ann, &ben, "hello").await;
    let tasks: Vec<_> = (0..RACERS)
        .map(|i| {
            let text = if i % 2 == 0 { "left" } else { "right" };
            let (repo, request) = (changes(storage), request(&message, &ann, Change::Edit(body(text))));
            tokio::spawn(async move { (text, repo.change(&request).await.expect("an edit")) })
        })
        .collect();
    let mut stored_edits = Vec::new();
    for task in tasks {
        let (text, outcome) = tokio::time::timeout(PATIENCE, task).await.expect("the edits finish").unwrap();
        match outcome {
            ChangeOutcome::Changed(stored) => {
                assert_eq!(stored.update.message.text(), Some(&body(text)), "the state right after it");
                stored_edits.push(stored);
            }
            ChangeOutcome::Unchanged(current) => {
                assert_eq!(current.text(), Some(&body(text)), "made already")
            }
            other => panic!("an edit ended in {other:?}"),
        }
    }
    stored_edits.sort_by_key(|stored| stored.update.change.seq);
    let seqs: Vec<Seq> = stored_edits.iter().map(|stored| stored.update.change.seq).collect();
    assert_eq!(seqs, (2..2 + stored_edits.len() as u64).collect::<Vec<_>>());
    for pair in stored_edits.windows(2) {
        assert_ne!(
            pair[0].update.message.text(),
            pair[1].update.message.text(),
            "each stored edit changed the text"
        );
    }
    let last = stored_edits.last().expect("at least one edit is stored");
    assert_eq!(every_read(storage, &message.id).await, last.update.message, "the later seq wins");
    assert_eq!(head(storage, &ben).await, cursor(1 + stored_edits.len() as u64));
}
