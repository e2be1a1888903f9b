//! The JSON shapes of API.md shared by responses and events.
//!
//! Events of a user's stream (`newMessage`, `conversationRead`) carry the reader's cursor,
//! which differs per connection: [`encode_event`] leaves it out, [`encode_at`] puts it in,
//! and [`with_cursor`] adds it to a payload encoded once for every connection.

use application::ports::{Event, Notice, PresenceMode, PresenceUpdate, TypingTarget, Update};
use application::stream::{SyncEvent, SyncItem};
use chrono::SecondsFormat;
use domain::{
    Content, Group, Message, QuoteText, ReactionView, ReplyQuote, SyncCursor, SystemEvent, Timestamp, UserId,
};
use serde::Serialize;

/// RFC 3339, UTC, millisecond precision: what JavaScript's `Date.toISOString()` prints.
pub fn timestamp(at: &Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A message, as REST responses and `newMessage` events carry it: a direct message, a
/// group message, or a system entry of a group.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = Message)]
pub struct MessageDto {
    /// The message id: it sorts by creation within a conversation.
    #[serde(rename = "_id")]
    pub id: String,
    pub conversation_id: String,
    /// The author; of a system entry, the member who made the change.
    pub sender_id: String,
    /// The other user of a direct conversation; `null` in a group.
    pub receiver_id: Option<String>,
    /// The text exactly as sent (or as last edited); of a system entry, a sentence saying
    /// what changed; `""` once deleted.
    pub message: String,
    /// RFC 3339, UTC, millisecond precision.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The sender's own key for this message, when the send carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub client_message_id: Option<String>,
    /// The entry's place in its conversation: 1, 2, 3, … in the order entries were stored.
    pub seq: u64,
    /// `text` for what someone wrote, `system` for an entry recording a change of a group.
    #[schema(example = "text")]
    pub kind: MessageKind,
    /// Of a system entry: what changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub system: Option<ChangeDto>,
    /// When the text was last edited; absent if never.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    pub edited_at: Option<String>,
    /// When the message was deleted; absent unless it is. A deleted message has no text
    /// and no reactions.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    pub deleted_at: Option<String>,
    /// Who deleted it: the sender, or an admin or the owner of the group.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub deleted_by: Option<String>,
    /// Each emoji reacted with, in the order first used: how many reacted, and whether the
    /// reader did.
    #[schema(value_type = Vec<ReactionDto>)]
    pub reactions: Vec<ReactionView>,
    /// The message this one answers, quoted as it stands now.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reply_to: Option<QuoteDto>,
    /// The seq of the message's last change (its `seq` if it never changed): of two copies of
    /// one message, keep the one with the greater `version`.
    pub version: u64,
    /// `true` for a message of a group I was removed from that changed after my removal: it is
    /// shown without its text and reactions (and with its own `seq` as `version`, so that a
    /// device that had it keeps its copy). Absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    #[schema(nullable = false)]
    pub withheld: bool,
    /// Where the reader stands in everything it follows once it has this message (in
    /// `newMessage` events and stream pages; absent elsewhere): hand the last one processed
    /// back as `since` to resume. Opaque text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "42")]
    pub cursor: Option<String>,
}

/// Whether a message is what someone wrote or a system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Text,
    System,
}

/// One emoji of a message's reactions as the reader sees it.
#[derive(utoipa::ToSchema)]
#[schema(as = Reaction)]
#[allow(dead_code, reason = "the schema of `ReactionView` as serialized")]
pub struct ReactionDto {
    /// The emoji, fully qualified (`👍`, `❤️`).
    #[schema(example = "👍")]
    emoji: String,
    count: u64,
    /// Whether the reader is one of those who reacted with it.
    me: bool,
}

/// What a reply shows of the message it answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ReplyQuote)]
pub struct QuoteDto {
    pub message_id: String,
    pub sender_id: String,
    /// The first 100 characters (grapheme clusters) of its text now; absent once deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub text: Option<String>,
    /// Whether its text goes on after `text`.
    pub truncated: bool,
    /// Whether it is deleted.
    pub deleted: bool,
}

impl From<&ReplyQuote> for QuoteDto {
    fn from(quote: &ReplyQuote) -> Self {
        let (text, truncated, deleted) = match &quote.text {
            QuoteText::Excerpt { text, truncated } => (Some(text.clone()), *truncated, false),
            QuoteText::Deleted => (None, false, true),
        };
        Self {
            message_id: quote.message_id.to_string(),
            sender_id: quote.sender_id.to_string(),
            text,
            truncated,
            deleted,
        }
    }
}

impl MessageDto {
    /// The message as `reader` sees it (whether they reacted), without a cursor: as REST
    /// responses about one conversation carry it.
    pub fn seen_by(m: &Message, reader: &UserId) -> Self {
        let (message, edited_at, deleted_at, deleted_by, reactions) = match m.content() {
            Content::Live { .. } if m.is_withheld() => (String::new(), None, None, None, Vec::new()),
            Content::Live { body, edited_at, reactions } => (
                body.as_str().to_owned(),
                edited_at.as_ref().map(timestamp),
                None,
                None,
                reactions.view(reader),
            ),
            Content::Deleted(tombstone) => (
                String::new(),
                None,
                Some(timestamp(&tombstone.deleted_at)),
                Some(tombstone.deleted_by.to_string()),
                Vec::new(),
            ),
        };
        Self {
            id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            sender_id: m.sender_id.to_string(),
            receiver_id: m.receiver_id.as_ref().map(UserId::to_string),
            message,
            created_at: timestamp(&m.created_at),
            client_message_id: m.client_id.as_ref().map(|id| id.as_str().to_owned()),
            seq: m.seq,
            kind: if m.system.is_some() { MessageKind::System } else { MessageKind::Text },
            system: m.system.as_ref().map(ChangeDto::from),
            edited_at,
            deleted_at,
            deleted_by,
            reactions,
            reply_to: m.reply_to.as_ref().map(QuoteDto::from),
            version: m.version(),
            withheld: m.is_withheld(),
            cursor: None,
        }
    }

    /// The message as `reader` has it at `cursor`, as events and stream pages carry it.
    pub fn at(message: &Message, reader: &UserId, cursor: &SyncCursor) -> Self {
        Self { cursor: Some(cursor.to_string()), ..Self::seen_by(message, reader) }
    }
}

/// `messageUpdated`: a message was edited, deleted, or reacted to.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = MessageUpdated)]
pub struct MessageUpdatedDto {
    /// The message as it stands (at least as new as the change).
    pub message: MessageDto,
    pub change: MessageChangeDto,
    /// As in `newMessage`: where the reader stands once they have this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cursor: Option<String>,
}

/// What changed about a message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = MessageChange)]
pub struct MessageChangeDto {
    /// `edited`, `deleted`, `reactionAdded` or `reactionRemoved`.
    #[schema(example = "reactionAdded")]
    pub kind: &'static str,
    /// Who made the change.
    pub user_id: String,
    /// Of a reaction change: the emoji.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub emoji: Option<String>,
    /// The change's seq in its conversation (the message's `version` right after it).
    pub seq: u64,
    #[schema(format = DateTime)]
    pub at: String,
}

impl MessageUpdatedDto {
    pub fn at(update: &Update, reader: &UserId, cursor: &SyncCursor) -> Self {
        let change = &update.change;
        Self {
            message: MessageDto::seen_by(&update.message, reader),
            change: MessageChangeDto {
                kind: change.kind.as_str(),
                user_id: change.actor.to_string(),
                emoji: change.kind.emoji().map(|emoji| emoji.as_str().to_owned()),
                seq: change.seq,
                at: timestamp(&change.at),
            },
            cursor: Some(cursor.to_string()),
        }
    }
}

/// A change of a group: in a system entry's `system`, and in `conversationUpdated`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = GroupChange)]
pub struct ChangeDto {
    /// `created`, `added`, `removed`, `left`, `renamed`, `roleChanged` or
    /// `ownershipTransferred`.
    #[schema(example = "added")]
    pub action: String,
    /// Who made the change (who left, for `left`).
    pub actor_id: String,
    /// The members the group was created with (`created`), who were added or removed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user_ids: Option<Vec<String>>,
    /// Whose role changed, or who became the owner.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user_id: Option<String>,
    /// The group's name, for `created` and `renamed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub name: Option<String>,
    /// The new role (`admin` or `member`), for `roleChanged`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub role: Option<String>,
    /// Who took over when the owner left, for `left`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub new_owner_id: Option<String>,
}

impl From<&SystemEvent> for ChangeDto {
    fn from(change: &SystemEvent) -> Self {
        let ids = |users: &[UserId]| Some(users.iter().map(UserId::to_string).collect());
        let mut dto = ChangeDto {
            action: change.action().to_owned(),
            actor_id: change.actor().to_string(),
            user_ids: None,
            user_id: None,
            name: None,
            role: None,
            new_owner_id: None,
        };
        match change {
            SystemEvent::Created { name, members, .. } => {
                dto.user_ids = ids(members);
                dto.name = Some(name.to_string());
            }
            SystemEvent::Added { users, .. } | SystemEvent::Removed { users, .. } => {
                dto.user_ids = ids(users)
            }
            SystemEvent::Left { new_owner, .. } => {
                dto.new_owner_id = new_owner.as_ref().map(UserId::to_string)
            }
            SystemEvent::Renamed { name, .. } => dto.name = Some(name.to_string()),
            SystemEvent::RoleChanged { user, role, .. } => {
                dto.user_id = Some(user.to_string());
                dto.role = Some(role.to_string());
            }
            SystemEvent::OwnershipTransferred { user, .. } => dto.user_id = Some(user.to_string()),
        }
        dto
    }
}

/// `conversationUpdated`: a group's name, members or roles changed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ConversationUpdated)]
pub struct ConversationUpdatedDto {
    pub conversation: UpdatedGroupDto,
    pub change: ChangeDto,
}

/// The group as it stands after a change.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = UpdatedGroup)]
pub struct UpdatedGroupDto {
    #[serde(rename = "_id")]
    pub id: String,
    /// Always `group`.
    #[schema(example = "group")]
    pub kind: &'static str,
    pub name: String,
    pub member_count: u64,
    /// The membership version: every change of name, members or roles moves it.
    pub version: u64,
}

impl ConversationUpdatedDto {
    pub fn new(group: &Group, version: u64, member_count: u64, change: &SystemEvent) -> Self {
        Self {
            conversation: UpdatedGroupDto {
                id: group.id.to_string(),
                kind: "group",
                name: group.name.to_string(),
                member_count,
                version,
            },
            change: ChangeDto::from(change),
        }
    }
}

/// `conversationRead`: the reader's own read position moved (on another of their devices).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = ConversationRead)]
pub struct ConversationReadDto {
    pub conversation_id: String,
    /// The id of the last message read.
    pub up_to: String,
    /// Its seq: everything up to it is read.
    pub seq: u64,
    /// As in `newMessage`: where the reader stands once they have this event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub cursor: Option<String>,
}

/// `messagesRead`: another member read a conversation up to a message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(as = MessagesRead)]
pub struct MessagesReadDto {
    pub conversation_id: String,
    /// Who read.
    pub user_id: String,
    pub up_to: String,
    pub seq: u64,
}

/// `typing`: to a user (`to`), or in a group (`conversationId`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingDto {
    pub from: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    pub is_typing: bool,
}

/// One user's state in a `presence` event (the scoped presence mode).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceDto {
    pub user_id: String,
    pub online: bool,
}

/// `presenceMode`: which presence mode applies from now on, `"full"` or `"scoped"`.
#[derive(Debug, Clone, Serialize)]
pub struct PresenceModeDto {
    pub mode: &'static str,
}

impl From<PresenceMode> for PresenceModeDto {
    fn from(mode: PresenceMode) -> Self {
        Self {
            mode: match mode {
                PresenceMode::FullList => "full",
                PresenceMode::Scoped => "scoped",
            },
        }
    }
}

/// The data of a client's `typing` event, on every transport: `to` a user, or a group's
/// `conversationId`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingIn {
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub is_typing: bool,
}

/// Event names on the wire, the same on every transport.
pub mod names {
    pub const NEW_MESSAGE: &str = "newMessage";
    pub const ONLINE_USERS: &str = "onlineUsers";
    /// The original app's name for `onlineUsers`, kept for its clients.
    pub const GET_ONLINE_USERS: &str = "getOnlineUsers";
    pub const TYPING: &str = "typing";
    /// Scoped presence: an array of `{userId, online}`.
    pub const PRESENCE: &str = "presence";
    /// `{"mode": "full" | "scoped"}`: the presence mode from now on.
    pub const PRESENCE_MODE: &str = "presenceMode";
    pub const CONVERSATION_UPDATED: &str = "conversationUpdated";
    pub const CONVERSATION_READ: &str = "conversationRead";
    /// A message was edited, deleted or reacted to.
    pub const MESSAGE_UPDATED: &str = "messageUpdated";
    pub const MESSAGES_READ: &str = "messagesRead";
}

fn json<T: Serialize>(value: &T) -> String {
    // Plain structs of strings, numbers and bools: serializing them cannot fail.
    serde_json::to_string(value).expect("event payloads serialize")
}

/// Whether `event` belongs to its reader's stream: it is placed by the connection's
/// follower, and its frame (if it has one) carries the reader's cursor.
pub fn in_stream(event: &Event) -> bool {
    matches!(
        event,
        Event::NewMessage { .. }
            | Event::GroupMessage { .. }
            | Event::MessageUpdated { .. }
            | Event::GroupUpdated { .. }
            | Event::Notice { .. }
    )
}

/// The `(name, JSON payload)` frames one event becomes, payloads serialized once. Events of
/// a stream ([`in_stream`]) are encoded without their cursor (see [`with_cursor`]); a
/// notice of joining or leaving a group has no frame, and neither has a change of a message
/// (what it shows differs per reader: see [`encode_item`]).
pub fn encode_event(event: &Event) -> Vec<(&'static str, String)> {
    match event {
        Event::NewMessage { message, .. } | Event::GroupMessage { message, .. } => {
            // A new message has no reactions yet: it reads the same to every reader.
            vec![(names::NEW_MESSAGE, json(&MessageDto::seen_by(message, &message.sender_id)))]
        }
        Event::MessageUpdated { .. } | Event::GroupUpdated { .. } => Vec::new(),
        Event::Notice { notice: Notice::Read { conversation, seq, message_id }, .. } => vec![(
            names::CONVERSATION_READ,
            json(&ConversationReadDto {
                conversation_id: conversation.to_string(),
                up_to: message_id.to_string(),
                seq: *seq,
                cursor: None,
            }),
        )],
        Event::Notice { notice: Notice::Joined { .. } | Notice::Left { .. }, .. } => Vec::new(),
        Event::ConversationUpdated { group, version, member_count, change } => vec![(
            names::CONVERSATION_UPDATED,
            json(&ConversationUpdatedDto::new(group, *version, *member_count, change)),
        )],
        Event::MessagesRead { conversation, user, seq, up_to } => vec![(
            names::MESSAGES_READ,
            json(&MessagesReadDto {
                conversation_id: conversation.to_string(),
                user_id: user.to_string(),
                up_to: up_to.to_string(),
                seq: *seq,
            }),
        )],
        Event::OnlineUsers(users) => {
            let payload = json(&users.iter().map(UserId::as_str).collect::<Vec<_>>());
            vec![(names::ONLINE_USERS, payload.clone()), (names::GET_ONLINE_USERS, payload)]
        }
        Event::Presence(PresenceUpdate::Changes(changes)) => {
            let changes: Vec<PresenceDto> = changes
                .iter()
                .map(|(user, online)| PresenceDto { user_id: user.to_string(), online: *online })
                .collect();
            vec![(names::PRESENCE, json(&changes))]
        }
        Event::Presence(PresenceUpdate::Mode(mode)) => {
            vec![(names::PRESENCE_MODE, json(&PresenceModeDto::from(*mode)))]
        }
        Event::Typing { from, to, is_typing } => {
            let (to, conversation_id) = match to {
                TypingTarget::User(user) => (Some(user.to_string()), None),
                TypingTarget::Group(group) => (None, Some(group.to_string())),
            };
            vec![(
                names::TYPING,
                json(&TypingDto { from: from.to_string(), to, conversation_id, is_typing: *is_typing }),
            )]
        }
    }
}

/// The frames of an event of a reader's stream as that reader gets it at `cursor`.
pub fn encode_at(event: &Event, cursor: &SyncCursor) -> Vec<(&'static str, String)> {
    let text = cursor.to_string();
    encode_event(event).into_iter().map(|(name, data)| (name, with_cursor(&data, &text))).collect()
}

/// The frame of one delivery of `reader`'s stream (a replayed or filled-in entry, a read on
/// another device, a change of a message), with the reader's cursor right after it.
pub fn encode_item(item: &SyncItem, reader: &UserId) -> (&'static str, String) {
    match &item.event {
        SyncEvent::Message(message) => {
            (names::NEW_MESSAGE, json(&MessageDto::at(message, reader, &item.cursor)))
        }
        SyncEvent::Updated(update) => {
            (names::MESSAGE_UPDATED, json(&MessageUpdatedDto::at(update, reader, &item.cursor)))
        }
        SyncEvent::Read { conversation, seq, up_to } => (
            names::CONVERSATION_READ,
            json(&ConversationReadDto {
                conversation_id: conversation.to_string(),
                up_to: up_to.to_string(),
                seq: *seq,
                cursor: Some(item.cursor.to_string()),
            }),
        ),
    }
}

/// A payload of [`encode_event`] (a JSON object without a `cursor`) with `"cursor": cursor`
/// added as its last field.
pub fn with_cursor(payload: &str, cursor: &str) -> String {
    // The cursor's text is digits, `~`, `.`, `-` and hex digits: nothing to escape.
    debug_assert!(cursor.bytes().all(|b| b.is_ascii_alphanumeric() || b"~.-".contains(&b)));
    match payload.strip_suffix('}') {
        Some("{") => format!("{{\"cursor\":\"{cursor}\"}}"),
        Some(fields) => format!("{fields},\"cursor\":\"{cursor}\"}}"),
        // Every payload of a stream event is an object: this is not reached.
        None => payload.to_owned(),
    }
}

/// A native `/ws` text frame: `{"event": name, "data": payload}`.
pub fn native_frame(name: &str, data: &str) -> String {
    // `name` is one of the constants above: no escaping needed.
    format!("{{\"event\":\"{name}\",\"data\":{data}}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::ports::Notice;
    use chrono::TimeZone;
    use domain::{ClientMessageId, ConversationId, Cursor, GroupName, MessageBody, MessageId, Role};

    fn message() -> Message {
        Message {
            reply_to: None,
            changed: None,
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: Some(UserId::generate()),
            body: MessageBody::parse("<b>\"hi\"</b>").unwrap(),
            system: None,
            seq: 3,
            created_at: chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            client_id: None,
        }
    }

    fn data(frames: &[(&'static str, String)]) -> serde_json::Value {
        assert_eq!(frames.len(), 1, "{frames:?}");
        let (name, data) = &frames[0];
        let frame: serde_json::Value = serde_json::from_str(&native_frame(name, data)).unwrap();
        frame["data"].clone()
    }

    #[test]
    fn new_message_has_the_documented_fields() {
        let message = message();
        let event = Event::NewMessage { message: message.clone(), cursor: Cursor::new(42).unwrap() };
        let frames = encode_at(&event, &SyncCursor::at(Cursor::new(42).unwrap()));
        assert_eq!(frames[0].0, "newMessage");
        let data = data(&frames);
        assert_eq!(data["_id"], message.id.as_str());
        assert_eq!(data["message"], "<b>\"hi\"</b>");
        assert_eq!(data["createdAt"], "2026-01-02T03:04:05.000Z");
        assert_eq!(data["senderId"], message.sender_id.as_str());
        assert_eq!(data["seq"], 3);
        assert_eq!(data["kind"], "text");
        assert_eq!(data["cursor"], "42", "the cursor is decimal text");
        assert!(data.get("clientMessageId").is_none(), "omitted without one");
        assert!(data.get("system").is_none());
    }

    #[test]
    fn a_group_entry_has_no_receiver_and_the_readers_whole_cursor() {
        let group = ConversationId::generate();
        let (actor, added) = (UserId::generate(), UserId::generate());
        let entry = Message {
            conversation_id: group.clone(),
            receiver_id: None,
            system: Some(SystemEvent::Added { actor: actor.clone(), users: vec![added.clone()] }),
            seq: 7,
            ..message()
        };
        let cursor = SyncCursor { stream: Cursor::new(9).unwrap(), groups: [(group.clone(), 7)].into() };
        let data = data(&encode_at(&Event::GroupMessage { message: entry, version: 2 }, &cursor));
        assert_eq!(data["conversationId"], group.as_str());
        assert!(data["receiverId"].is_null(), "present, null: {data}");
        assert_eq!(data["kind"], "system");
        assert_eq!(data["seq"], 7);
        assert_eq!(data["cursor"], format!("9~{group}.7"));
        assert_eq!(
            data["system"],
            serde_json::json!({"action": "added", "actorId": actor.as_str(), "userIds": [added.as_str()]})
        );
    }

    #[test]
    fn a_client_message_id_is_shown_when_the_send_had_one() {
        let message = Message { client_id: Some(ClientMessageId::parse("k-1").unwrap()), ..message() };
        let event = Event::NewMessage { message, cursor: Cursor::START.next() };
        let data = data(&encode_at(&event, &SyncCursor::at(Cursor::START.next())));
        assert_eq!(data["clientMessageId"], "k-1");
        assert_eq!(data["cursor"], "1");
    }

    #[test]
    fn a_change_is_shown_to_each_reader_with_their_own_reactions_and_a_tombstone_without_text() {
        let (ann, ben) = (UserId::generate(), UserId::generate());
        let thumbs = domain::Emoji::parse("👍").unwrap();
        let m = message();
        let reacted = domain::MessageState {
            content: domain::Content::Live {
                body: m.body.clone(),
                edited_at: None,
                reactions: domain::Reactions::from_stored([(thumbs.clone(), ann.clone())]),
            },
            version: 4,
            ..m.state()
        };
        let change = domain::MessageChange {
            conversation_id: m.conversation_id.clone(),
            message_id: m.id.clone(),
            actor: ann.clone(),
            kind: domain::ChangeKind::ReactionAdded { emoji: thumbs },
            at: m.created_at,
            seq: 4,
        };
        let update = Update { change, message: m.clone().with_state(reacted) };
        let event = Event::MessageUpdated { update: update.clone(), cursor: Cursor::new(5).unwrap() };
        assert!(in_stream(&event));
        assert!(encode_event(&event).is_empty(), "encoded per reader, not once for all");
        let item =
            SyncItem { cursor: SyncCursor::at(Cursor::new(5).unwrap()), event: SyncEvent::Updated(update) };
        for (reader, me) in [(&ann, true), (&ben, false)] {
            let (name, payload) = encode_item(&item, reader);
            assert_eq!(name, "messageUpdated");
            let payload: serde_json::Value = serde_json::from_str(&payload).unwrap();
            assert_eq!(payload["cursor"], "5");
            assert_eq!(payload["change"]["kind"], "reactionAdded");
            assert_eq!(payload["change"]["emoji"], "👍");
            assert_eq!(payload["message"]["version"], 4);
            assert_eq!(
                payload["message"]["reactions"],
                serde_json::json!([{"emoji": "👍", "count": 1, "me": me}])
            );
        }

        let tombstone = domain::MessageState {
            content: domain::Content::Deleted(domain::Tombstone {
                deleted_at: m.created_at,
                deleted_by: ben.clone(),
            }),
            version: 6,
            ..m.state()
        };
        let dto = serde_json::to_value(MessageDto::seen_by(&m.clone().with_state(tombstone), &ann)).unwrap();
        assert_eq!(dto["message"], "");
        assert_eq!(dto["reactions"], serde_json::json!([]));
        assert_eq!(dto["deletedBy"], ben.as_str());
        assert!(dto.get("editedAt").is_none());
    }

    #[test]
    fn rest_responses_carry_no_cursor_unless_given_one() {
        let message = message();
        let reader = &message.sender_id;
        let plain = serde_json::to_value(MessageDto::seen_by(&message, reader)).unwrap();
        assert!(plain.get("cursor").is_none());
        assert_eq!(plain.as_object().unwrap().len(), 10, "{plain}");
        assert_eq!(plain["reactions"], serde_json::json!([]));
        assert_eq!(plain["version"], 3);
        let cursor = SyncCursor::at(Cursor::new(7).unwrap());
        let at = serde_json::to_value(MessageDto::at(&message, reader, &cursor)).unwrap();
        assert_eq!(at["cursor"], "7");
        assert_eq!(at["_id"], message.id.as_str());
    }

    #[test]
    fn stream_events_are_encoded_once_and_given_each_readers_cursor() {
        let event = Event::NewMessage { message: message(), cursor: Cursor::new(4).unwrap() };
        let (_, shared) = &encode_event(&event)[0];
        assert!(!shared.contains("cursor"), "{shared}");
        let cursor = SyncCursor::at(Cursor::new(4).unwrap());
        assert_eq!(with_cursor(shared, &cursor.to_string()), encode_at(&event, &cursor)[0].1);
        let parsed: serde_json::Value = serde_json::from_str(&with_cursor(shared, "4")).unwrap();
        assert_eq!(parsed["cursor"], "4");
        assert_eq!(with_cursor("{}", "0"), r#"{"cursor":"0"}"#);
    }

    #[test]
    fn a_read_on_another_device_is_conversation_read_with_the_cursor() {
        let (conversation, up_to) = (ConversationId::generate(), MessageId::generate());
        let notice = Notice::Read { conversation: conversation.clone(), seq: 5, message_id: up_to.clone() };
        let event = Event::Notice { notice, cursor: Cursor::new(12).unwrap() };
        let frames = encode_at(&event, &SyncCursor::at(Cursor::new(12).unwrap()));
        assert_eq!(frames[0].0, "conversationRead");
        assert_eq!(
            data(&frames),
            serde_json::json!({
                "conversationId": conversation.as_str(), "upTo": up_to.as_str(), "seq": 5, "cursor": "12"
            })
        );
        let joined = Event::Notice {
            notice: Notice::Joined { group: conversation, seq: 1 },
            cursor: Cursor::new(13).unwrap(),
        };
        assert!(encode_event(&joined).is_empty(), "joining shows as the group's entry, not a frame");
    }

    #[test]
    fn messages_read_names_the_reader() {
        let (conversation, user, up_to) =
            (ConversationId::generate(), UserId::generate(), MessageId::generate());
        let event = Event::MessagesRead {
            conversation: conversation.clone(),
            user: user.clone(),
            seq: 9,
            up_to: up_to.clone(),
        };
        let frames = encode_event(&event);
        assert_eq!(frames[0].0, "messagesRead");
        assert_eq!(
            data(&frames),
            serde_json::json!({
                "conversationId": conversation.as_str(), "userId": user.as_str(), "upTo": up_to.as_str(), "seq": 9
            })
        );
    }

    #[test]
    fn conversation_updated_has_the_group_and_the_change() {
        let (actor, user) = (UserId::generate(), UserId::generate());
        let group = Group {
            id: ConversationId::generate(),
            name: GroupName::parse("Team").unwrap(),
            created_by: actor.clone(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            last_seq: 4,
        };
        let change = SystemEvent::RoleChanged { actor: actor.clone(), user: user.clone(), role: Role::Admin };
        let frames = encode_event(&Event::ConversationUpdated {
            group: group.clone(),
            version: 3,
            member_count: 5,
            change,
        });
        assert_eq!(frames[0].0, "conversationUpdated");
        assert_eq!(
            data(&frames),
            serde_json::json!({
                "conversation": {"_id": group.id.as_str(), "kind": "group", "name": "Team", "memberCount": 5, "version": 3},
                "change": {"action": "roleChanged", "actorId": actor.as_str(), "userId": user.as_str(), "role": "admin"}
            })
        );
    }

    #[test]
    fn every_change_says_what_it_is_about() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let name = GroupName::parse("Crew").unwrap();
        let created = ChangeDto::from(&SystemEvent::Created {
            actor: a.clone(),
            name: name.clone(),
            members: vec![a.clone(), b.clone()],
        });
        assert_eq!((created.name.as_deref(), created.user_ids.map(|ids| ids.len())), (Some("Crew"), Some(2)));
        let left = ChangeDto::from(&SystemEvent::Left { actor: a.clone(), new_owner: Some(b.clone()) });
        assert_eq!((left.action.as_str(), left.new_owner_id), ("left", Some(b.to_string())));
        let renamed = ChangeDto::from(&SystemEvent::Renamed { actor: a.clone(), name });
        assert_eq!(renamed.name.as_deref(), Some("Crew"));
        let transferred = ChangeDto::from(&SystemEvent::OwnershipTransferred { actor: a, user: b.clone() });
        assert_eq!(
            (transferred.action.as_str(), transferred.user_id),
            ("ownershipTransferred", Some(b.to_string()))
        );
    }

    #[test]
    fn typing_names_the_user_or_the_group() {
        let (from, to, group) = (UserId::generate(), UserId::generate(), ConversationId::generate());
        let direct = data(&encode_event(&Event::Typing {
            from: from.clone(),
            to: TypingTarget::User(to.clone()),
            is_typing: true,
        }));
        assert_eq!(direct, serde_json::json!({"from": from.as_str(), "to": to.as_str(), "isTyping": true}));
        let in_group = data(&encode_event(&Event::Typing {
            from: from.clone(),
            to: TypingTarget::Group(group.clone()),
            is_typing: false,
        }));
        assert_eq!(
            in_group,
            serde_json::json!({"from": from.as_str(), "conversationId": group.as_str(), "isTyping": false})
        );
    }

    #[test]
    fn presence_changes_and_the_mode_have_frames_of_their_own() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let frames = encode_event(&Event::Presence(PresenceUpdate::Changes(vec![
            (a.clone(), true),
            (b.clone(), false),
        ])));
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].0, "presence");
        assert_eq!(
            data(&frames),
            serde_json::json!([{"userId": a.as_str(), "online": true}, {"userId": b.as_str(), "online": false}])
        );
        let mode = encode_event(&Event::Presence(PresenceUpdate::Mode(PresenceMode::Scoped)));
        assert_eq!(mode[0].0, "presenceMode");
        assert_eq!(data(&mode), serde_json::json!({"mode": "scoped"}));
        let full = encode_event(&Event::Presence(PresenceUpdate::Mode(PresenceMode::FullList)));
        assert_eq!(data(&full), serde_json::json!({"mode": "full"}));
    }

    #[test]
    fn online_users_goes_out_under_both_names() {
        let user = UserId::generate();
        let frames = encode_event(&Event::OnlineUsers(vec![user.clone()]));
        let names: Vec<_> = frames.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["onlineUsers", "getOnlineUsers"]);
        assert_eq!(frames[0].1, format!("[\"{user}\"]"));
    }
}
