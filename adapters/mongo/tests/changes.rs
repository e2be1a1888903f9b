//! Message changes on MongoDB: what a change stores, how entries, streams, histories and the
//! conversation list read it back, and changes racing on one message.

mod common;

use std::sync::Arc;

use application::ports::{
    Appended, ChangeOutcome, ChangeRequest, ConversationRepository, GroupAppended, GroupEntry,
    GroupRepository, MessageChangeRepository, MessageRepository, StoredChange, StreamEntry,
};
use chrono::{SubsecRound as _, Utc};
use domain::{
    Change, ChangeError, ChangeKind, Content, Conversation, ConversationId, Cursor, EditWindow, Emoji, Group,
    GroupName, Member, Message, MessageBody, MessageId, ParticipantPair, QuoteText, ReplyQuote, Role,
    SystemEvent, Timestamp, UserId,
};

use chat_mongo::MongoStore;
use common::Scratch;

fn now() -> Timestamp {
    Utc::now().trunc_subsecs(3)
}

fn message(conversation: &ConversationId, from: &UserId, to: Option<&UserId>, body: &str) -> Message {
    Message {
        reply_to: None,
        changed: None,
        id: MessageId::generate(),
        conversation_id: conversation.clone(),
        sender_id: from.clone(),
        receiver_id: to.cloned(),
        body: MessageBody::parse(body).unwrap(),
        system: None,
        seq: 0,
        created_at: now(),
        client_id: None,
    }
}

async fn send(store: &MongoStore, conversation: &Conversation, message: &Message) -> Message {
    match store.append(conversation, message).await.expect("a send") {
        Appended::Created(stored) => stored.message,
        other => panic!("{other:?}"),
    }
}

fn request(
    conversation: &ConversationId,
    message: &MessageId,
    actor: &UserId,
    change: Change,
) -> ChangeRequest {
    ChangeRequest {
        conversation: conversation.clone(),
        message: message.clone(),
        actor: actor.clone(),
        change,
        at: now(),
        window: EditWindow::default(),
    }
}

fn changed(outcome: ChangeOutcome) -> StoredChange {
    match outcome {
        ChangeOutcome::Changed(stored) => stored,
        other => panic!("expected a change, got {other:?}"),
    }
}

fn emoji(raw: &str) -> Emoji {
    Emoji::parse(raw).unwrap()
}

fn reaction_count(message: &Message, emoji: &Emoji) -> u64 {
    match message.content() {
        Content::Live { reactions, .. } => reactions.count(emoji),
        Content::Deleted(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_changes_take_seqs_and_both_stream_positions_and_read_back_everywhere() {
    let scratch = Scratch::new().await;
    let store = scratch.connect().await;
    let (a, b) = (UserId::generate(), UserId::generate());
    let conversation = Conversation::start(ParticipantPair::new(a.clone(), b.clone()).unwrap(), now());
    let id = &conversation.id;
    let first = send(&store, &conversation, &message(id, &a, Some(&b), "hello")).await;
    let mut reply = message(id, &b, Some(&a), "hi back");
    reply.reply_to = Some(ReplyQuote::of(&first, &first.content()));
    let reply = send(&store, &conversation, &reply).await;
    assert_eq!((first.seq, reply.seq), (1, 2));

    // b's head is at 2 (received 1, sent 2); a's too.
    let edit = Change::Edit(MessageBody::parse("hello, edited").unwrap());
    let edited = changed(
        MessageChangeRepository::change(&store, &request(id, &first.id, &a, edit.clone())).await.unwrap(),
    );
    assert_eq!(edited.update.change.seq, 3);
    assert_eq!(edited.update.change.kind, ChangeKind::Edited);
    assert_eq!(edited.update.message.version(), 3);
    assert_eq!(edited.update.message.text().map(MessageBody::as_str), Some("hello, edited"));
    assert_eq!(edited.version, 0);
    let at: Vec<(UserId, u64)> =
        edited.positions.iter().map(|p| (p.user.clone(), p.cursor.position())).collect();
    assert_eq!(at, vec![(a.clone(), 3), (b.clone(), 3)], "sender's position, then the receiver's");
    // The same edit again changes nothing and takes nothing.
    match MessageChangeRepository::change(&store, &request(id, &first.id, &a, edit)).await.unwrap() {
        ChangeOutcome::Unchanged(message) => assert_eq!(message.version(), 3),
        other => panic!("{other:?}"),
    }
    let thumbs = emoji("👍");
    let reacted = changed(
        MessageChangeRepository::change(&store, &request(id, &first.id, &b, Change::React(thumbs.clone())))
            .await
            .unwrap(),
    );
    assert_eq!(reacted.update.change.seq, 4);
    assert_eq!(reaction_count(&reacted.update.message, &thumbs), 1);

    // History: messages only, as they stand now; the reply quotes the edited text.
    let history = store.list_by_conversation(id, 1, None, 50).await.unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].text().map(MessageBody::as_str), Some("hello, edited"));
    assert_eq!(history[0].version(), 4);
    assert_eq!(reaction_count(&history[0], &thumbs), 1);
    let quote = history[1].reply_to.as_ref().expect("the reply's quote");
    assert_eq!(quote.message_id, first.id);
    assert_eq!(quote.text, QuoteText::Excerpt { text: "hello, edited".into(), truncated: false });

    // Entries: messages and changes merged by seq.
    let entries = store.entries(id, 0, None, 50).await.unwrap();
    let seqs: Vec<u64> = entries.iter().map(GroupEntry::seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    match &entries[2] {
        GroupEntry::Update(update) => {
            assert_eq!(update.change.kind, ChangeKind::Edited);
            assert_eq!(update.message.version(), 4, "the message as it stands now");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.entries(id, 1, Some(3), 50).await.unwrap().len(), 2);
    assert_eq!(store.entries(id, 0, None, 3).await.unwrap().len(), 3);

    // Streams: an update at each change's position.
    let stream = store.stream(&a, Cursor::START, 50).await.unwrap();
    assert_eq!(stream.iter().map(|i| i.cursor.position()).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    match &stream[3].entry {
        StreamEntry::Update(update) => {
            assert_eq!(update.change.kind, ChangeKind::ReactionAdded { emoji: thumbs.clone() });
            assert_eq!(update.change.actor, b);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&stream[1].entry, StreamEntry::Message(m) if m.reply_to.is_some()));

    // Unread: b has read nothing of a's (a's one message); the changes count for nothing.
    let listed = store.list_for_user(&b).await.unwrap();
    assert_eq!(listed.len(), 1);
    // b sent the reply at seq 2, which moved b's read position to 2.
    assert_eq!(listed[0].unread, 0);
    assert_eq!(listed[0].last_message.as_ref().map(|m| m.id.clone()), Some(reply.id.clone()));
    assert!(listed[0].last_message.as_ref().unwrap().reply_to.is_some());
    let unread = send(&store, &conversation, &message(id, &a, Some(&b), "are you there?")).await;
    assert_eq!(store.list_for_user(&b).await.unwrap()[0].unread, 1);
    let deleted = changed(
        MessageChangeRepository::change(&store, &request(id, &unread.id, &a, Change::Delete)).await.unwrap(),
    );
    assert_eq!(deleted.update.message.body.as_str(), MessageBody::WITHDRAWN);
    assert!(deleted.update.message.text().is_none());
    assert_eq!(store.list_for_user(&b).await.unwrap()[0].unread, 0, "a deleted message is not unread");
    assert_eq!(store.list_for_user(&a).await.unwrap()[0].unread, 0);

    // Deleting the quoted message shows in the reply's quote; its reactions are gone.
    changed(
        MessageChangeRepository::change(&store, &request(id, &first.id, &a, Change::Delete)).await.unwrap(),
    );
    let found = MessageChangeRepository::find(&store, &first.id).await.unwrap().expect("the tombstone");
    assert!(matches!(found.content(), Content::Deleted(t) if t.deleted_by == a));
    let reply = MessageChangeRepository::find(&store, &reply.id).await.unwrap().unwrap();
    assert_eq!(reply.reply_to.unwrap().text, QuoteText::Deleted);
    // A reaction on a deleted message is refused; taking one back changes nothing.
    let refused =
        MessageChangeRepository::change(&store, &request(id, &first.id, &b, Change::React(thumbs.clone())))
            .await
            .unwrap();
    assert_eq!(refused, ChangeOutcome::Refused(ChangeError::Deleted));
    let unreact =
        MessageChangeRepository::change(&store, &request(id, &first.id, &b, Change::Unreact(thumbs)))
            .await
            .unwrap();
    assert!(matches!(unreact, ChangeOutcome::Unchanged(_)), "{unreact:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_refused_to_strangers_other_senders_and_other_conversations() {
    let scratch = Scratch::new().await;
    let store = scratch.connect().await;
    let (a, b, stranger) = (UserId::generate(), UserId::generate(), UserId::generate());
    let conversation = Conversation::start(ParticipantPair::new(a.clone(), b.clone()).unwrap(), now());
    let id = &conversation.id;
    let sent = send(&store, &conversation, &message(id, &a, Some(&b), "mine")).await;
    let edit = || Change::Edit(MessageBody::parse("changed").unwrap());
    assert_eq!(
        MessageChangeRepository::change(&store, &request(id, &sent.id, &b, edit())).await.unwrap(),
        ChangeOutcome::Refused(ChangeError::NotSender)
    );
    assert_eq!(
        MessageChangeRepository::change(&store, &request(id, &sent.id, &stranger, edit())).await.unwrap(),
        ChangeOutcome::NotMember
    );
    let elsewhere = ConversationId::generate();
    assert_eq!(
        MessageChangeRepository::change(&store, &request(&elsewhere, &sent.id, &a, edit())).await.unwrap(),
        ChangeOutcome::NotMember
    );
    assert_eq!(
        MessageChangeRepository::change(&store, &request(id, &MessageId::generate(), &a, edit()))
            .await
            .unwrap(),
        ChangeOutcome::NotFound
    );
    // Nothing was taken.
    assert_eq!(store.stream_head(&a).await.unwrap().position(), 1);
    assert_eq!(store.entries(id, 0, None, 10).await.unwrap().len(), 1);
    assert_eq!(MessageChangeRepository::find(&store, &MessageId::generate()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_members_reacting_at_once_all_count_and_a_repeated_reaction_counts_once() {
    const MEMBERS: usize = 50;
    let scratch = Scratch::new().await;
    let store = Arc::new(scratch.connect().await);
    let users: Vec<UserId> = (0..MEMBERS).map(|_| UserId::generate()).collect();
    let group = ConversationId::generate();
    let at = now();
    let name = GroupName::parse("Hot").unwrap();
    let mut created = message(&group, &users[0], None, "created");
    created.system =
        Some(SystemEvent::Created { actor: users[0].clone(), name: name.clone(), members: users.clone() });
    let members: Vec<Member> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            Member::joining(user.clone(), if i == 0 { Role::Owner } else { Role::Member }, at, 1)
        })
        .collect();
    let info = Group {
        id: group.clone(),
        name,
        created_by: users[0].clone(),
        created_at: at,
        updated_at: at,
        last_seq: 1,
    };
    store.create(&info, &members, &created).await.unwrap();
    let hot = match store.append_to_group(&message(&group, &users[1], None, "react to me")).await.unwrap() {
        GroupAppended::Created { message, .. } => message,
        other => panic!("{other:?}"),
    };
    let heart = emoji("❤️");
    let tasks: Vec<_> = users
        .iter()
        .chain([&users[7]]) // one member asks twice
        .map(|user| {
            let (store, request) =
                (Arc::clone(&store), request(&group, &hot.id, user, Change::React(heart.clone())));
            tokio::spawn(async move { MessageChangeRepository::change(&*store, &request).await })
        })
        .collect();
    let mut seqs = Vec::new();
    let mut unchanged = 0;
    for task in tasks {
        match task.await.unwrap().expect("no change fails") {
            ChangeOutcome::Changed(stored) => {
                assert!(stored.positions.is_empty(), "a group change takes no stream positions");
                assert_eq!(stored.version, 1);
                seqs.push(stored.update.change.seq);
            }
            ChangeOutcome::Unchanged(_) => unchanged += 1,
            other => panic!("{other:?}"),
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (3..3 + MEMBERS as u64).collect::<Vec<_>>());
    assert_eq!(unchanged, 1);
    let now = MessageChangeRepository::find(&*store, &hot.id).await.unwrap().unwrap();
    assert_eq!(reaction_count(&now, &heart), MEMBERS as u64);
    assert_eq!(now.version(), 2 + MEMBERS as u64);
    // A member who read nothing has the first entry and the message unread, not the reactions.
    let listed = store.list_for_user(&users[2]).await.unwrap();
    assert_eq!(listed[0].unread, 2);
    let entries = store.entries(&group, 0, None, 500).await.unwrap();
    assert_eq!(entries.len(), 2 + MEMBERS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_racing_from_two_servers_are_each_stored_once_at_their_own_seq() {
    const EACH: usize = 10;
    let scratch = Scratch::new().await;
    let stores = [Arc::new(scratch.connect().await), Arc::new(scratch.connect().await)];
    let (a, b) = (UserId::generate(), UserId::generate());
    let conversation = Conversation::start(ParticipantPair::new(a.clone(), b.clone()).unwrap(), now());
    let hot = send(&stores[0], &conversation, &message(&conversation.id, &a, Some(&b), "pick one")).await;
    // Each user reacts with EACH different emoji, half through each server: the two servers'
    // transactions meet on the same documents (both heads, the conversation, the message).
    let emoji: Vec<Emoji> = ["😀", "😂", "😍", "😎", "🤔", "😴", "🥳", "😇", "🙃", "😉"].map(emoji).to_vec();
    let tasks: Vec<_> = (0..2 * EACH)
        .map(|i| {
            let store = Arc::clone(&stores[i % 2]);
            let user = if i < EACH { a.clone() } else { b.clone() };
            let request = request(&conversation.id, &hot.id, &user, Change::React(emoji[i % EACH].clone()));
            tokio::spawn(async move { MessageChangeRepository::change(&*store, &request).await })
        })
        .collect();
    let mut seqs = Vec::new();
    let mut positions = Vec::new();
    for task in tasks {
        let stored = changed(task.await.unwrap().expect("no change fails"));
        seqs.push(stored.update.change.seq);
        positions.extend(stored.positions.iter().map(|p| (p.user.clone(), p.cursor.position())));
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (2..2 + 2 * EACH as u64).collect::<Vec<_>>());
    positions.sort();
    positions.dedup();
    assert_eq!(positions.len(), 4 * EACH, "each change took its own position in both streams");
    let now = MessageChangeRepository::find(&*stores[1], &hot.id).await.unwrap().unwrap();
    for emoji in &emoji {
        assert_eq!(reaction_count(&now, emoji), 2, "{emoji}");
    }
    // Both streams are gap-free: the message, then every change.
    for user in [&a, &b] {
        let stream = stores[0].stream(user, Cursor::START, 100).await.unwrap();
        assert_eq!(stream.len(), 1 + 2 * EACH);
    }
}
