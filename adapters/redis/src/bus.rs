//! What instances say to each other on the bus channel: one JSON object per event.
//!
//! The shape is this crate's own (not the client wire format; the domain's serde only for a
//! group's [`SystemEvent`], which stores keep in that form too), and carries a version so that
//! instances of two releases can share a bus during a rolling upgrade: a message of an
//! unknown version is skipped, never misread.
//!
//! Changes within version 1, each of which an older reader skips or ignores rather than
//! misreads:
//! - fields added to `newMessage` (`cursor`, `clientId`, `seq`): older readers ignore them. A
//!   `newMessage` without a cursor (from an older release) cannot be placed in its reader's
//!   stream and is skipped with [`DecodeError::NoCursor`]; connections get that message from
//!   the store with the next event, or when they resume. One without `seq` shows seq 0.
//! - events of groups and read state (`groupMessage`, `notice`, `conversationUpdated`,
//!   `messagesRead`, `groupTyping`): an older reader does not know their `type` and skips
//!   them as malformed.
//! - recipients that are a group, `"to": {"group": id}`, published once whatever the group's
//!   size (each instance finds the members among its own connections): an older reader
//!   expects a list or `null` there and skips the message, so it can never take one for a
//!   broadcast.
//! - scoped presence (`presence`, `presenceMode`): an older reader skips them as malformed, and
//!   its connections keep the full list it sends.

use application::ports::{Event, Notice, PresenceMode, PresenceUpdate, TypingTarget, Update};
use domain::{
    Changed, ClientMessageId, ConversationId, Cursor, Group, GroupName, Message, MessageBody, MessageChange,
    MessageId, ReplyQuote, Seq, SystemEvent, Timestamp, UserId,
};
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;

/// Whose connections get an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    Everyone,
    Users(Vec<UserId>),
    /// The group's members, as each instance knows them.
    Group(ConversationId),
}

/// One event as it travels between instances.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// The instance that published it; that instance has delivered it locally already.
    pub origin: String,
    pub to: Recipients,
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("bus message of unknown version {0}")]
    Version(u8),
    #[error("malformed bus message")]
    Malformed(#[from] serde_json::Error),
    #[error("newMessage without a stream cursor (published by an older release)")]
    NoCursor,
    #[error("a changed message's text breaks the rules of stored text")]
    Body,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u8,
    origin: String,
    to: WireTo,
    event: WireEvent,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum WireTo {
    /// `null` for everyone, or the users.
    Users(Option<Vec<UserId>>),
    Group {
        group: ConversationId,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
enum WireEvent {
    /// A direct message.
    NewMessage {
        id: MessageId,
        conversation_id: ConversationId,
        sender_id: UserId,
        receiver_id: Option<UserId>,
        body: MessageBody,
        created_at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<ClientMessageId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<ReplyQuote>,
        /// The message's position in the stream of the one user in `to`.
        #[serde(default)]
        cursor: Option<Cursor>,
        #[serde(default)]
        seq: Seq,
    },
    GroupMessage {
        id: MessageId,
        conversation_id: ConversationId,
        sender_id: UserId,
        body: MessageBody,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<SystemEvent>,
        seq: Seq,
        created_at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<ClientMessageId>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<ReplyQuote>,
        version: u64,
    },
    /// A change of a direct message, at `cursor` in the stream of the one user in `to`.
    MessageUpdated {
        update: WireUpdate,
        cursor: Cursor,
    },
    /// A change of a group's message: the group's entry at `update.change.seq`.
    GroupUpdated {
        update: WireUpdate,
        version: u64,
    },
    Notice {
        notice: WireNotice,
        /// The notice's position in the stream of the one user in `to`.
        cursor: Cursor,
    },
    ConversationUpdated {
        id: ConversationId,
        name: GroupName,
        created_by: UserId,
        created_at: Timestamp,
        updated_at: Timestamp,
        last_seq: Seq,
        version: u64,
        member_count: u64,
        change: SystemEvent,
    },
    MessagesRead {
        conversation_id: ConversationId,
        user_id: UserId,
        seq: Seq,
        up_to: MessageId,
    },
    OnlineUsers {
        users: Vec<UserId>,
    },
    /// Scoped presence: the current state of some users.
    Presence {
        changes: Vec<WirePresence>,
    },
    /// The presence mode from now on: `full` or `scoped`.
    PresenceMode {
        mode: WireMode,
    },
    Typing {
        from: UserId,
        to: UserId,
        is_typing: bool,
    },
    GroupTyping {
        from: UserId,
        group: ConversationId,
        is_typing: bool,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WirePresence {
    user_id: UserId,
    online: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum WireMode {
    Full,
    Scoped,
}

/// A change with the message as it stands after it.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireUpdate {
    change: MessageChange,
    id: MessageId,
    conversation_id: ConversationId,
    sender_id: UserId,
    receiver_id: Option<UserId>,
    /// The text as sent, or of a deleted message the stand-in (see `Message::changed`): read
    /// back under the rules of stored text.
    body: String,
    seq: Seq,
    created_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_id: Option<ClientMessageId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<ReplyQuote>,
    changed: Option<Changed>,
}

impl From<Update> for WireUpdate {
    fn from(Update { change, message: m }: Update) -> Self {
        Self {
            change,
            id: m.id,
            conversation_id: m.conversation_id,
            sender_id: m.sender_id,
            receiver_id: m.receiver_id,
            body: m.body.as_str().to_owned(),
            seq: m.seq,
            created_at: m.created_at,
            client_id: m.client_id,
            reply_to: m.reply_to,
            changed: m.changed.map(|changed| *changed),
        }
    }
}

impl TryFrom<WireUpdate> for Update {
    type Error = DecodeError;
    fn try_from(u: WireUpdate) -> Result<Self, DecodeError> {
        Ok(Update {
            change: u.change,
            message: Message {
                id: u.id,
                conversation_id: u.conversation_id,
                sender_id: u.sender_id,
                receiver_id: u.receiver_id,
                body: MessageBody::stored(&u.body).map_err(|_| DecodeError::Body)?,
                system: None,
                seq: u.seq,
                created_at: u.created_at,
                client_id: u.client_id,
                reply_to: u.reply_to,
                changed: u.changed.map(Box::new),
            },
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
enum WireNotice {
    Joined { group: ConversationId, seq: Seq },
    Left { group: ConversationId, seq: Seq },
    Read { conversation_id: ConversationId, seq: Seq, message_id: MessageId },
}

impl From<&Event> for WireEvent {
    fn from(event: &Event) -> Self {
        match event.clone() {
            Event::NewMessage { message: m, cursor } => WireEvent::NewMessage {
                id: m.id,
                conversation_id: m.conversation_id,
                sender_id: m.sender_id,
                receiver_id: m.receiver_id,
                body: m.body,
                created_at: m.created_at,
                client_id: m.client_id,
                reply_to: m.reply_to,
                cursor: Some(cursor),
                seq: m.seq,
            },
            Event::GroupMessage { message: m, version } => WireEvent::GroupMessage {
                id: m.id,
                conversation_id: m.conversation_id,
                sender_id: m.sender_id,
                body: m.body,
                system: m.system,
                seq: m.seq,
                created_at: m.created_at,
                client_id: m.client_id,
                reply_to: m.reply_to,
                version,
            },
            Event::MessageUpdated { update, cursor } => {
                WireEvent::MessageUpdated { update: update.into(), cursor }
            }
            Event::GroupUpdated { update, version } => {
                WireEvent::GroupUpdated { update: update.into(), version }
            }
            Event::Notice { notice, cursor } => WireEvent::Notice {
                notice: match notice {
                    Notice::Joined { group, seq } => WireNotice::Joined { group, seq },
                    Notice::Left { group, seq } => WireNotice::Left { group, seq },
                    Notice::Read { conversation, seq, message_id } => {
                        WireNotice::Read { conversation_id: conversation, seq, message_id }
                    }
                },
                cursor,
            },
            Event::ConversationUpdated { group, version, member_count, change } => {
                WireEvent::ConversationUpdated {
                    id: group.id,
                    name: group.name,
                    created_by: group.created_by,
                    created_at: group.created_at,
                    updated_at: group.updated_at,
                    last_seq: group.last_seq,
                    version,
                    member_count,
                    change,
                }
            }
            Event::MessagesRead { conversation, user, seq, up_to } => {
                WireEvent::MessagesRead { conversation_id: conversation, user_id: user, seq, up_to }
            }
            Event::OnlineUsers(users) => WireEvent::OnlineUsers { users },
            Event::Presence(PresenceUpdate::Changes(changes)) => WireEvent::Presence {
                changes: changes
                    .into_iter()
                    .map(|(user_id, online)| WirePresence { user_id, online })
                    .collect(),
            },
            Event::Presence(PresenceUpdate::Mode(mode)) => WireEvent::PresenceMode {
                mode: match mode {
                    PresenceMode::FullList => WireMode::Full,
                    PresenceMode::Scoped => WireMode::Scoped,
                },
            },
            Event::Typing { from, to: TypingTarget::User(to), is_typing } => {
                WireEvent::Typing { from, to, is_typing }
            }
            Event::Typing { from, to: TypingTarget::Group(group), is_typing } => {
                WireEvent::GroupTyping { from, group, is_typing }
            }
        }
    }
}

impl TryFrom<WireEvent> for Event {
    type Error = DecodeError;
    fn try_from(event: WireEvent) -> Result<Self, DecodeError> {
        Ok(match event {
            WireEvent::NewMessage {
                id,
                conversation_id,
                sender_id,
                receiver_id,
                body,
                created_at,
                client_id,
                reply_to,
                cursor,
                seq,
            } => Event::NewMessage {
                message: Message {
                    reply_to,
                    changed: None,
                    id,
                    conversation_id,
                    sender_id,
                    receiver_id,
                    body,
                    system: None,
                    seq,
                    created_at,
                    client_id,
                },
                cursor: cursor.ok_or(DecodeError::NoCursor)?,
            },
            WireEvent::GroupMessage {
                id,
                conversation_id,
                sender_id,
                body,
                system,
                seq,
                created_at,
                client_id,
                reply_to,
                version,
            } => Event::GroupMessage {
                message: Message {
                    reply_to,
                    changed: None,
                    id,
                    conversation_id,
                    sender_id,
                    receiver_id: None,
                    body,
                    system,
                    seq,
                    created_at,
                    client_id,
                },
                version,
            },
            WireEvent::MessageUpdated { update, cursor } => {
                Event::MessageUpdated { update: update.try_into()?, cursor }
            }
            WireEvent::GroupUpdated { update, version } => {
                Event::GroupUpdated { update: update.try_into()?, version }
            }
            WireEvent::Notice { notice, cursor } => Event::Notice {
                notice: match notice {
                    WireNotice::Joined { group, seq } => Notice::Joined { group, seq },
                    WireNotice::Left { group, seq } => Notice::Left { group, seq },
                    WireNotice::Read { conversation_id, seq, message_id } => {
                        Notice::Read { conversation: conversation_id, seq, message_id }
                    }
                },
                cursor,
            },
            WireEvent::ConversationUpdated {
                id,
                name,
                created_by,
                created_at,
                updated_at,
                last_seq,
                version,
                member_count,
                change,
            } => Event::ConversationUpdated {
                group: Group { id, name, created_by, created_at, updated_at, last_seq },
                version,
                member_count,
                change,
            },
            WireEvent::MessagesRead { conversation_id, user_id, seq, up_to } => {
                Event::MessagesRead { conversation: conversation_id, user: user_id, seq, up_to }
            }
            WireEvent::OnlineUsers { users } => Event::OnlineUsers(users),
            WireEvent::Presence { changes } => Event::Presence(PresenceUpdate::Changes(
                changes.into_iter().map(|change| (change.user_id, change.online)).collect(),
            )),
            WireEvent::PresenceMode { mode } => Event::Presence(PresenceUpdate::Mode(match mode {
                WireMode::Full => PresenceMode::FullList,
                WireMode::Scoped => PresenceMode::Scoped,
            })),
            WireEvent::Typing { from, to, is_typing } => {
                Event::Typing { from, to: TypingTarget::User(to), is_typing }
            }
            WireEvent::GroupTyping { from, group, is_typing } => {
                Event::Typing { from, to: TypingTarget::Group(group), is_typing }
            }
        })
    }
}

pub fn encode(origin: &str, to: &Recipients, event: &Event) -> String {
    let to = match to {
        Recipients::Everyone => WireTo::Users(None),
        Recipients::Users(users) => WireTo::Users(Some(users.clone())),
        Recipients::Group(group) => WireTo::Group { group: group.clone() },
    };
    let envelope = Envelope { v: VERSION, origin: origin.to_owned(), to, event: WireEvent::from(event) };
    // Strings, ids, numbers, bools and timestamps: serializing them cannot fail.
    serde_json::to_string(&envelope).expect("bus messages serialize")
}

/// The format version a message says it is in (its `v` field).
pub(crate) fn version_of(payload: &[u8]) -> Result<u8, serde_json::Error> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u8,
    }
    serde_json::from_slice::<Versioned>(payload).map(|versioned| versioned.v)
}

pub fn decode(payload: &[u8]) -> Result<BusMessage, DecodeError> {
    let v = version_of(payload)?;
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    // Ids and bodies are checked again on the way in: a bus is an input like any other.
    let envelope: Envelope = serde_json::from_slice(payload)?;
    let to = match envelope.to {
        WireTo::Users(None) => Recipients::Everyone,
        WireTo::Users(Some(users)) => Recipients::Users(users),
        WireTo::Group { group } => Recipients::Group(group),
    };
    Ok(BusMessage { origin: envelope.origin, to, event: envelope.event.try_into()? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use domain::Role;

    fn message() -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: Some(UserId::generate()),
            body: MessageBody::parse("  <b>\"hé\"</b>\n").unwrap(),
            system: None,
            seq: 12,
            created_at: chrono::Utc.timestamp_nanos(1_767_323_045_123_456_789),
            client_id: None,
        }
    }

    fn new_message(m: Message, position: u64) -> Event {
        Event::NewMessage { message: m, cursor: Cursor::new(position).unwrap() }
    }

    fn group() -> Group {
        Group {
            id: ConversationId::generate(),
            name: GroupName::parse("Crew").unwrap(),
            created_by: UserId::generate(),
            created_at: chrono::Utc.timestamp_millis_opt(1_767_323_045_123).unwrap(),
            updated_at: chrono::Utc.timestamp_millis_opt(1_767_323_046_456).unwrap(),
            last_seq: 7,
        }
    }

    /// A change of `m` by someone, with `m` in `content` after it.
    fn update(m: Message, kind: domain::ChangeKind, content: domain::Content) -> application::ports::Update {
        let seq = m.seq + 3;
        let change = MessageChange {
            conversation_id: m.conversation_id.clone(),
            message_id: m.id.clone(),
            actor: UserId::generate(),
            kind,
            at: chrono::Utc.timestamp_millis_opt(1_767_323_047_000).unwrap(),
            seq,
        };
        let state = domain::MessageState { content, version: seq, ..m.state() };
        application::ports::Update { change, message: m.with_state(state) }
    }

    #[test]
    fn changes_of_messages_survive_the_round_trip_with_reactions_replies_and_tombstones() {
        let thumbs = domain::Emoji::parse("👍").unwrap();
        let (ann, ben) = (UserId::generate(), UserId::generate());
        let reactions =
            domain::Reactions::from_stored([(thumbs.clone(), ann.clone()), (thumbs.clone(), ben)]);
        let quote = ReplyQuote::of(&message(), &message().content());
        let replying = Message { reply_to: Some(quote), ..message() };
        let edited_at = chrono::Utc.timestamp_millis_opt(1_767_323_046_000).unwrap();
        let live = domain::Content::Live {
            body: MessageBody::parse("edited").unwrap(),
            edited_at: Some(edited_at),
            reactions,
        };
        let reacted = update(replying.clone(), domain::ChangeKind::ReactionAdded { emoji: thumbs }, live);
        round_trip(
            Recipients::Users(vec![ann.clone()]),
            Event::MessageUpdated { update: reacted.clone(), cursor: Cursor::new(9).unwrap() },
        );
        let tombstone =
            domain::Content::Deleted(domain::Tombstone { deleted_at: edited_at, deleted_by: ann });
        let deleted =
            update(Message { receiver_id: None, ..message() }, domain::ChangeKind::Deleted, tombstone);
        let to_group = Recipients::Group(deleted.message.conversation_id.clone());
        round_trip(to_group.clone(), Event::GroupUpdated { update: deleted.clone(), version: 3 });
        assert_eq!(deleted.message.text(), None, "no text travels for a deleted message");
        assert!(!encode("a", &to_group, &Event::GroupUpdated { update: deleted, version: 3 }).contains("hé"));
        // A new message names the message it answers, too.
        let reply = Message { reply_to: reacted.message.reply_to.clone(), ..message() };
        round_trip(Recipients::Users(vec![UserId::generate()]), new_message(reply, 4));
    }

    fn round_trip(to: Recipients, event: Event) {
        let decoded = decode(encode("i1", &to, &event).as_bytes()).unwrap();
        assert_eq!(decoded, BusMessage { origin: "i1".into(), to, event });
    }

    #[test]
    fn a_new_message_survives_the_round_trip_exactly() {
        let m = message();
        let to = vec![m.receiver_id.clone().unwrap()];
        round_trip(Recipients::Users(to), new_message(m, 42));
    }

    #[test]
    fn every_event_of_groups_and_read_state_survives_the_round_trip() {
        let group = group();
        let (a, b) = (UserId::generate(), UserId::generate());
        let to_group = || Recipients::Group(group.id.clone());
        let entry = Message {
            conversation_id: group.id.clone(),
            receiver_id: None,
            system: Some(SystemEvent::Added { actor: a.clone(), users: vec![b.clone()] }),
            client_id: Some(ClientMessageId::parse("k").unwrap()),
            ..message()
        };
        round_trip(to_group(), Event::GroupMessage { message: entry, version: 4 });
        round_trip(
            to_group(),
            Event::GroupMessage { message: Message { receiver_id: None, ..message() }, version: 1 },
        );
        round_trip(
            to_group(),
            Event::ConversationUpdated {
                group: group.clone(),
                version: 5,
                member_count: 3,
                change: SystemEvent::RoleChanged { actor: a.clone(), user: b.clone(), role: Role::Admin },
            },
        );
        round_trip(
            to_group(),
            Event::MessagesRead {
                conversation: group.id.clone(),
                user: a.clone(),
                seq: 6,
                up_to: MessageId::generate(),
            },
        );
        round_trip(
            to_group(),
            Event::Typing { from: a.clone(), to: TypingTarget::Group(group.id.clone()), is_typing: true },
        );
        let cursor = Cursor::new(9).unwrap();
        for notice in [
            Notice::Joined { group: group.id.clone(), seq: 2 },
            Notice::Left { group: group.id.clone(), seq: 3 },
            Notice::Read { conversation: group.id.clone(), seq: 3, message_id: MessageId::generate() },
        ] {
            round_trip(Recipients::Users(vec![b.clone()]), Event::Notice { notice, cursor });
        }
    }

    #[test]
    fn a_group_event_names_the_group_once_and_no_member() {
        let group = ConversationId::generate();
        let event = Event::GroupMessage { message: Message { receiver_id: None, ..message() }, version: 2 };
        let json: serde_json::Value =
            serde_json::from_str(&encode("i1", &Recipients::Group(group.clone()), &event)).unwrap();
        assert_eq!(json["to"], serde_json::json!({"group": group.as_str()}));
        assert_eq!(json["event"]["type"], "groupMessage");
        assert_eq!(json["event"]["version"], 2);
    }

    #[test]
    fn a_group_message_is_no_broadcast_to_an_older_reader() {
        // What a reader of the release before groups decoded: `to` a list of users or null.
        #[derive(Deserialize)]
        #[allow(dead_code)]
        struct OlderEnvelope {
            v: u8,
            origin: String,
            to: Option<Vec<UserId>>,
            event: serde_json::Value,
        }
        let payload =
            encode("new", &Recipients::Group(ConversationId::generate()), &Event::OnlineUsers(Vec::new()));
        assert!(serde_json::from_str::<OlderEnvelope>(&payload).is_err(), "skipped, never delivered to all");
    }

    #[test]
    fn the_cursor_and_client_id_travel_as_text() {
        let m = Message { client_id: Some(ClientMessageId::parse("k-1").unwrap()), ..message() };
        let event = new_message(m, i64::MAX as u64);
        let payload = encode("i1", &Recipients::Everyone, &event);
        let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(json["event"]["cursor"], "9223372036854775807");
        assert_eq!(json["event"]["clientId"], "k-1");
        assert_eq!(json["event"]["seq"], 12);
        assert_eq!(decode(payload.as_bytes()).unwrap().event, event);
        // Without a client id, the field is left out.
        let payload = encode("i1", &Recipients::Everyone, &new_message(message(), 1));
        assert!(!payload.contains("clientId"), "{payload}");
    }

    #[test]
    fn a_new_message_from_an_older_release_without_a_cursor_is_skipped_clearly() {
        let payload =
            encode("old", &Recipients::Everyone, &new_message(message(), 3)).replace(r#","cursor":"3""#, "");
        assert!(!payload.contains("cursor"), "{payload}");
        let error = decode(payload.as_bytes()).unwrap_err();
        assert!(matches!(error, DecodeError::NoCursor), "{error}");
        assert!(error.to_string().contains("older release"));
    }

    #[test]
    fn a_new_message_from_an_older_release_without_a_seq_is_still_delivered() {
        let payload =
            encode("old", &Recipients::Everyone, &new_message(message(), 3)).replace(r#","seq":12"#, "");
        assert!(!payload.contains("seq"), "{payload}");
        let Event::NewMessage { message, .. } = decode(payload.as_bytes()).unwrap().event else {
            panic!("a new message");
        };
        assert_eq!(message.seq, 0);
    }

    #[test]
    fn an_invalid_cursor_or_client_id_is_refused() {
        let payload = encode("x", &Recipients::Everyone, &new_message(message(), 3));
        for bad in [r#""cursor":"-1""#, r#""cursor":"03""#, r#""cursor":3"#, r#""cursor":null"#] {
            let payload = payload.replace(r#""cursor":"3""#, bad);
            let decoded = decode(payload.as_bytes());
            assert!(
                matches!(decoded, Err(DecodeError::Malformed(_) | DecodeError::NoCursor)),
                "{bad}: {decoded:?}"
            );
        }
        let m = Message { client_id: Some(ClientMessageId::parse("k").unwrap()), ..message() };
        let with_id = encode("x", &Recipients::Everyone, &new_message(m, 3))
            .replace(r#""clientId":"k""#, r#""clientId":"a b""#);
        assert!(matches!(decode(with_id.as_bytes()), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn a_broadcast_has_no_recipients_list() {
        let event = Event::OnlineUsers(vec![UserId::generate(), UserId::generate()]);
        let payload = encode("i2", &Recipients::Everyone, &event);
        assert!(payload.contains(r#""to":null"#), "{payload}");
        let decoded = decode(payload.as_bytes()).unwrap();
        assert_eq!(decoded.to, Recipients::Everyone);
        assert_eq!(decoded.event, event);
    }

    #[test]
    fn presence_changes_and_modes_round_trip() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let to = Recipients::Users(vec![b.clone()]);
        for event in [
            Event::Presence(PresenceUpdate::Changes(vec![(a.clone(), true), (b.clone(), false)])),
            Event::Presence(PresenceUpdate::Mode(PresenceMode::Scoped)),
            Event::Presence(PresenceUpdate::Mode(PresenceMode::FullList)),
        ] {
            let decoded = decode(encode("i1", &to, &event).as_bytes()).unwrap();
            assert_eq!((decoded.to, decoded.event), (to.clone(), event));
        }
    }

    #[test]
    fn typing_notices_round_trip() {
        let event = Event::Typing {
            from: UserId::generate(),
            to: TypingTarget::User(UserId::generate()),
            is_typing: false,
        };
        assert_eq!(decode(encode("i3", &Recipients::Everyone, &event).as_bytes()).unwrap().event, event);
    }

    #[test]
    fn another_version_is_refused_rather_than_misread() {
        let payload = br#"{"v":2,"origin":"x","to":null,"event":{"type":"somethingNew"}}"#;
        assert!(matches!(decode(payload), Err(DecodeError::Version(2))));
    }

    #[test]
    fn invalid_ids_bodies_or_names_are_refused() {
        let bad_id = br#"{"v":1,"origin":"x","to":["not-an-id"],"event":{"type":"onlineUsers","users":[]}}"#;
        assert!(matches!(decode(bad_id), Err(DecodeError::Malformed(_))));
        let bad_group =
            br#"{"v":1,"origin":"x","to":{"group":"nope"},"event":{"type":"onlineUsers","users":[]}}"#;
        assert!(matches!(decode(bad_group), Err(DecodeError::Malformed(_))));
        let m = message();
        let empty_body = encode("x", &Recipients::Everyone, &new_message(m.clone(), 1))
            .replace(&serde_json::to_string(m.body.as_str()).unwrap(), "\"   \"");
        assert!(matches!(decode(empty_body.as_bytes()), Err(DecodeError::Malformed(_))));
        let updated = Event::ConversationUpdated {
            group: group(),
            version: 2,
            member_count: 2,
            change: SystemEvent::Renamed {
                actor: UserId::generate(),
                name: GroupName::parse("Crew").unwrap(),
            },
        };
        let bad_name =
            encode("x", &Recipients::Everyone, &updated).replacen(r#""name":"Crew""#, r#""name":"""#, 1);
        assert!(matches!(decode(bad_name.as_bytes()), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode(b"not json"), Err(DecodeError::Malformed(_))));
    }
}
