//! The JSON shapes of API.md shared by responses and events.

use application::ports::Event;
use chrono::SecondsFormat;
use domain::{Cursor, Message, Timestamp, UserId};
use serde::Serialize;

/// RFC 3339, UTC, millisecond precision: what JavaScript's `Date.toISOString()` prints.
pub fn timestamp(at: &Timestamp) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A message, as REST responses and `newMessage` events carry it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(as = Message)]
pub struct MessageDto {
    /// The message id: it sorts by creation within a conversation.
    #[serde(rename = "_id")]
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    pub receiver_id: String,
    /// The text exactly as sent.
    pub message: String,
    /// RFC 3339, UTC, millisecond precision.
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The sender's own key for this message, when the send carried one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub client_message_id: Option<String>,
    /// The message's position in the stream of the user it is shown to (in `newMessage`
    /// events and stream pages; absent elsewhere): hand the last one processed back as
    /// `since` to resume. Opaque decimal text.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, example = "42")]
    pub cursor: Option<String>,
}

impl MessageDto {
    /// The message at `cursor` of its reader's stream, as events and stream pages carry it.
    pub fn at(message: &Message, cursor: Cursor) -> Self {
        Self { cursor: Some(cursor.to_string()), ..Self::from(message) }
    }
}

/// Without a cursor, as REST responses about one conversation carry it.
impl From<&Message> for MessageDto {
    fn from(m: &Message) -> Self {
        Self {
            id: m.id.to_string(),
            conversation_id: m.conversation_id.to_string(),
            sender_id: m.sender_id.to_string(),
            receiver_id: m.receiver_id.to_string(),
            message: m.body.as_str().to_owned(),
            created_at: timestamp(&m.created_at),
            client_message_id: m.client_id.as_ref().map(|id| id.as_str().to_owned()),
            cursor: None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingDto {
    pub from: String,
    pub to: String,
    pub is_typing: bool,
}

/// The data of a client's `typing` event, on every transport.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TypingIn {
    pub to: String,
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
}

/// The `(name, JSON payload)` frames one event becomes, payloads serialized once.
pub fn encode_event(event: &Event) -> Vec<(&'static str, String)> {
    fn json<T: Serialize>(value: &T) -> String {
        // Serializing these plain structs of strings and bools cannot fail.
        serde_json::to_string(value).expect("event payloads serialize")
    }
    match event {
        Event::NewMessage { message, cursor } => {
            vec![(names::NEW_MESSAGE, json(&MessageDto::at(message, *cursor)))]
        }
        Event::OnlineUsers(users) => {
            let payload = json(&users.iter().map(UserId::as_str).collect::<Vec<_>>());
            vec![(names::ONLINE_USERS, payload.clone()), (names::GET_ONLINE_USERS, payload)]
        }
        Event::Typing { from, to, is_typing } => vec![(
            names::TYPING,
            json(&TypingDto { from: from.to_string(), to: to.to_string(), is_typing: *is_typing }),
        )],
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
    use chrono::TimeZone;
    use domain::{ClientMessageId, ConversationId, MessageBody, MessageId};

    fn message() -> Message {
        Message {
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: UserId::generate(),
            body: MessageBody::parse("<b>\"hi\"</b>").unwrap(),
            created_at: chrono::Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            client_id: None,
        }
    }

    #[test]
    fn new_message_has_the_documented_fields() {
        let message = message();
        let cursor = Cursor::new(42).unwrap();
        let frames = encode_event(&Event::NewMessage { message: message.clone(), cursor });
        assert_eq!(frames.len(), 1);
        let (name, data) = &frames[0];
        let frame: serde_json::Value = serde_json::from_str(&native_frame(name, data)).unwrap();
        assert_eq!(frame["event"], "newMessage");
        assert_eq!(frame["data"]["_id"], message.id.as_str());
        assert_eq!(frame["data"]["message"], "<b>\"hi\"</b>");
        assert_eq!(frame["data"]["createdAt"], "2026-01-02T03:04:05.000Z");
        assert_eq!(frame["data"]["senderId"], message.sender_id.as_str());
        assert_eq!(frame["data"]["cursor"], "42", "the cursor is decimal text");
        assert!(frame["data"].get("clientMessageId").is_none(), "omitted without one");
    }

    #[test]
    fn a_client_message_id_is_shown_when_the_send_had_one() {
        let message = Message { client_id: Some(ClientMessageId::parse("k-1").unwrap()), ..message() };
        let (_, data) = &encode_event(&Event::NewMessage { message, cursor: Cursor::START.next() })[0];
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["clientMessageId"], "k-1");
        assert_eq!(data["cursor"], "1");
    }

    #[test]
    fn rest_responses_carry_no_cursor_unless_given_one() {
        let message = message();
        let plain = serde_json::to_value(MessageDto::from(&message)).unwrap();
        assert!(plain.get("cursor").is_none());
        assert_eq!(plain.as_object().unwrap().len(), 6, "{plain}");
        let at = serde_json::to_value(MessageDto::at(&message, Cursor::new(7).unwrap())).unwrap();
        assert_eq!(at["cursor"], "7");
        assert_eq!(at["_id"], message.id.as_str());
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
