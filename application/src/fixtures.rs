//! Values the unit tests of several use cases build alike.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use domain::{
    Avatar, ConversationId, Cursor, FullName, Message, MessageBody, MessageId, PasswordHash, Seq,
    SystemEvent, Timestamp, User, UserId, Username,
};

use crate::ports::{
    GroupEntry, GroupPosition, MockGroupRepository, MockMessageRepository, Notice, StreamEntry, StreamItem,
    Update,
};

/// A user with the given id, created (and last updated) at `at`.
pub(crate) fn user_with_id(id: &UserId, at: Timestamp) -> User {
    let username = Username::parse("someone").unwrap();
    User {
        id: id.clone(),
        full_name: FullName::parse("Some One").unwrap(),
        avatar: Avatar::default_for(id),
        username,
        gender: None,
        password_hash: PasswordHash::new("h".into()),
        created_at: at,
        updated_at: at,
    }
}

/// A made-up history of what one user follows, answered by the message and group port mocks
/// as the ports say a store answers: the user's stream (direct messages and notices, at
/// positions 1, 2, 3, …) and the entries of the groups it names.
pub(crate) struct Timeline {
    pub(crate) user: UserId,
    pub(crate) stream: Vec<StreamEntry>,
    pub(crate) entries: BTreeMap<ConversationId, Vec<GroupEntry>>,
    /// How many times a group's entries were read.
    pub(crate) entry_reads: usize,
}

impl Timeline {
    pub(crate) fn new(user: &UserId) -> Self {
        Self { user: user.clone(), stream: Vec::new(), entries: BTreeMap::new(), entry_reads: 0 }
    }

    /// The user's groups at `at`: those whose last membership notice up to it is a join.
    fn groups_at(&self, at: Cursor) -> Vec<GroupPosition> {
        let mut last: BTreeMap<ConversationId, Option<Seq>> = BTreeMap::new();
        for (_, notice) in self.notices().filter(|(cursor, _)| *cursor <= at) {
            match notice {
                Notice::Joined { group, seq } => last.insert(group.clone(), Some(*seq)),
                Notice::Left { group, .. } => last.insert(group.clone(), None),
                Notice::Read { .. } => None,
            };
        }
        last.into_iter()
            .filter_map(|(group, joined)| {
                joined.map(|joined_seq| GroupPosition { last_seq: self.last_seq(&group), group, joined_seq })
            })
            .collect()
    }

    /// A direct message to the user, at the stream's next position.
    pub(crate) fn direct(&mut self, body: &str) -> (Cursor, Message) {
        let message = Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: Some(self.user.clone()),
            body: MessageBody::parse(body).unwrap(),
            system: None,
            seq: 1,
            created_at: chrono::Utc::now(),
            client_id: None,
        };
        self.stream.push(StreamEntry::Message(message.clone()));
        (self.head(), message)
    }

    /// A message someone sent to `group`, at its next seq.
    pub(crate) fn post(&mut self, group: &ConversationId, body: &str) -> Message {
        self.entry(group, body, None)
    }

    /// Someone reacts to `message` of `group` with a change entry at the group's next seq:
    /// the change and the message as it stands after it.
    pub(crate) fn react(&mut self, group: &ConversationId, message: &Message) -> Update {
        let seq = self.last_seq(group) + 1;
        let actor = UserId::generate();
        let emoji = domain::Emoji::parse("👍").unwrap();
        let mut state = message.state();
        let actor_of = domain::Actor { user: actor.clone(), role: domain::Role::Member };
        state
            .apply(&actor_of, &domain::Change::React(emoji.clone()), Default::default(), chrono::Utc::now())
            .unwrap();
        state.version = seq;
        let update = Update {
            change: domain::MessageChange {
                conversation_id: group.clone(),
                message_id: message.id.clone(),
                actor,
                kind: domain::ChangeKind::ReactionAdded { emoji },
                at: chrono::Utc::now(),
                seq,
            },
            message: message.clone().with_state(state),
        };
        self.entries.entry(group.clone()).or_default().push(GroupEntry::Update(update.clone()));
        update
    }

    /// The user joins `group` with a system entry at its next seq (and a `Joined` notice).
    pub(crate) fn join(&mut self, group: &ConversationId) -> (Cursor, Message) {
        let event = SystemEvent::Added { actor: UserId::generate(), users: vec![self.user.clone()] };
        let entry = self.entry(group, "someone added you", Some(event));
        self.stream.push(StreamEntry::Notice(Notice::Joined { group: group.clone(), seq: entry.seq }));
        (self.head(), entry)
    }

    /// The user is removed from `group` with a system entry at its next seq (and a `Left`
    /// notice).
    pub(crate) fn leave(&mut self, group: &ConversationId) -> (Cursor, Message) {
        let event = SystemEvent::Removed { actor: UserId::generate(), users: vec![self.user.clone()] };
        let entry = self.entry(group, "someone removed you", Some(event));
        self.stream.push(StreamEntry::Notice(Notice::Left { group: group.clone(), seq: entry.seq }));
        (self.head(), entry)
    }

    /// The user read `entry` (on some device).
    pub(crate) fn read(&mut self, entry: &Message) -> Cursor {
        self.stream.push(StreamEntry::Notice(Notice::Read {
            conversation: entry.conversation_id.clone(),
            seq: entry.seq,
            message_id: entry.id.clone(),
        }));
        self.head()
    }

    pub(crate) fn head(&self) -> Cursor {
        Cursor::new(self.stream.len() as u64).unwrap()
    }

    pub(crate) fn last_seq(&self, group: &ConversationId) -> Seq {
        self.entries.get(group).map_or(0, |e| e.len() as u64)
    }

    fn entry(&mut self, group: &ConversationId, body: &str, system: Option<SystemEvent>) -> Message {
        let entries = self.entries.entry(group.clone()).or_default();
        let message = Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: group.clone(),
            sender_id: UserId::generate(),
            receiver_id: None,
            body: MessageBody::parse(body).unwrap(),
            system,
            seq: entries.len() as u64 + 1,
            created_at: chrono::Utc::now(),
            client_id: None,
        };
        entries.push(GroupEntry::Message(message.clone()));
        message
    }

    /// The notices about `group` with their positions.
    fn notices(&self) -> impl Iterator<Item = (Cursor, &Notice)> {
        self.stream.iter().enumerate().filter_map(|(i, entry)| match entry {
            StreamEntry::Notice(notice) => Some((Cursor::new(i as u64 + 1).unwrap(), notice)),
            StreamEntry::Message(_) | StreamEntry::Update(_) => None,
        })
    }
}

/// Port mocks that answer from `timeline` as it stands at each call.
pub(crate) fn timeline_ports(
    timeline: &Arc<Mutex<Timeline>>,
) -> (MockMessageRepository, MockGroupRepository) {
    let mut messages = MockMessageRepository::new();
    let mut groups = MockGroupRepository::new();
    let t = timeline.clone();
    messages.expect_stream_head().returning(move |_| Ok(t.lock().unwrap().head()));
    let t = timeline.clone();
    messages.expect_stream().returning(move |_, after, limit| {
        let t = t.lock().unwrap();
        Ok(t.stream
            .iter()
            .enumerate()
            .skip(after.position() as usize)
            .take(limit as usize)
            .map(|(i, entry)| StreamItem { cursor: Cursor::new(i as u64 + 1).unwrap(), entry: entry.clone() })
            .collect())
    });
    let t = timeline.clone();
    messages.expect_entries().returning(move |group, after, until, limit| {
        let mut t = t.lock().unwrap();
        t.entry_reads += 1;
        Ok(t.entries
            .get(group)
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e.seq() > after && until.is_none_or(|until| e.seq() <= until))
                    .take(limit as usize)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default())
    });
    let t = timeline.clone();
    groups.expect_groups_at().returning(move |_, at| Ok(t.lock().unwrap().groups_at(at)));
    let t = timeline.clone();
    groups.expect_groups_at_head().returning(move |_| {
        let t = t.lock().unwrap();
        Ok((t.head(), t.groups_at(t.head())))
    });
    let t = timeline.clone();
    groups.expect_left_after().returning(move |_, group, after| {
        let t = t.lock().unwrap();
        let left = t.notices().find_map(|(cursor, notice)| match notice {
            Notice::Left { group: g, seq } if g == group && cursor > after => Some(*seq),
            _ => None,
        });
        Ok(left)
    });
    (messages, groups)
}
