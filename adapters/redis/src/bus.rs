//! What instances say to each other on the bus channel: one JSON object per event.
//!
//! The shape is this crate's own (not the client wire format, not the domain's serde), and
//! carries a version so that instances of two releases can share a bus during a rolling
//! upgrade: a message of an unknown version is skipped, never misread.
//!
//! Fields were added to `newMessage` within version 1 (`cursor`, `clientId`): older readers
//! ignore them. A `newMessage` without a cursor (from an older release) cannot be placed in
//! its reader's stream and is skipped with [`DecodeError::NoCursor`]; connections get that
//! message from the store with the next event, or when they resume.

use application::ports::Event;
use domain::{ClientMessageId, ConversationId, Cursor, Message, MessageBody, MessageId, Timestamp, UserId};
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;

/// One event as it travels between instances.
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// The instance that published it; that instance has delivered it locally already.
    pub origin: String,
    /// The users whose connections get it; `None` for everyone.
    pub to: Option<Vec<UserId>>,
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
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    v: u8,
    origin: String,
    to: Option<Vec<UserId>>,
    event: WireEvent,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
enum WireEvent {
    NewMessage {
        id: MessageId,
        conversation_id: ConversationId,
        sender_id: UserId,
        receiver_id: UserId,
        body: MessageBody,
        created_at: Timestamp,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<ClientMessageId>,
        /// The message's position in the stream of the one user in `to`.
        #[serde(default)]
        cursor: Option<Cursor>,
    },
    OnlineUsers {
        users: Vec<UserId>,
    },
    Typing {
        from: UserId,
        to: UserId,
        is_typing: bool,
    },
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
                cursor: Some(cursor),
            },
            Event::OnlineUsers(users) => WireEvent::OnlineUsers { users },
            Event::Typing { from, to, is_typing } => WireEvent::Typing { from, to, is_typing },
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
                cursor,
            } => Event::NewMessage {
                message: Message { id, conversation_id, sender_id, receiver_id, body, created_at, client_id },
                cursor: cursor.ok_or(DecodeError::NoCursor)?,
            },
            WireEvent::OnlineUsers { users } => Event::OnlineUsers(users),
            WireEvent::Typing { from, to, is_typing } => Event::Typing { from, to, is_typing },
        })
    }
}

pub fn encode(origin: &str, to: Option<&[UserId]>, event: &Event) -> String {
    let envelope = Envelope {
        v: VERSION,
        origin: origin.to_owned(),
        to: to.map(<[UserId]>::to_vec),
        event: WireEvent::from(event),
    };
    // Strings, ids, a bool, a number and a timestamp: serializing them cannot fail.
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
    Ok(BusMessage { origin: envelope.origin, to: envelope.to, event: envelope.event.try_into()? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn message() -> Message {
        Message {
            id: MessageId::generate(),
            conversation_id: ConversationId::generate(),
            sender_id: UserId::generate(),
            receiver_id: UserId::generate(),
            body: MessageBody::parse("  <b>\"hé\"</b>\n").unwrap(),
            created_at: chrono::Utc.timestamp_nanos(1_767_323_045_123_456_789),
            client_id: None,
        }
    }

    fn new_message(m: Message, position: u64) -> Event {
        Event::NewMessage { message: m, cursor: Cursor::new(position).unwrap() }
    }

    #[test]
    fn a_new_message_survives_the_round_trip_exactly() {
        let m = message();
        let to = vec![m.receiver_id.clone()];
        let event = new_message(m, 42);
        let decoded = decode(encode("i1", Some(&to), &event).as_bytes()).unwrap();
        assert_eq!(decoded, BusMessage { origin: "i1".into(), to: Some(to), event });
    }

    #[test]
    fn the_cursor_and_client_id_travel_as_text() {
        let m = Message { client_id: Some(ClientMessageId::parse("k-1").unwrap()), ..message() };
        let event = new_message(m, i64::MAX as u64);
        let payload = encode("i1", None, &event);
        let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(json["event"]["cursor"], "9223372036854775807");
        assert_eq!(json["event"]["clientId"], "k-1");
        assert_eq!(decode(payload.as_bytes()).unwrap().event, event);
        // Without a client id, the field is left out.
        let payload = encode("i1", None, &new_message(message(), 1));
        assert!(!payload.contains("clientId"), "{payload}");
    }

    #[test]
    fn a_new_message_from_an_older_release_without_a_cursor_is_skipped_clearly() {
        let payload = encode("old", None, &new_message(message(), 3)).replace(r#","cursor":"3""#, "");
        assert!(!payload.contains("cursor"), "{payload}");
        let error = decode(payload.as_bytes()).unwrap_err();
        assert!(matches!(error, DecodeError::NoCursor), "{error}");
        assert!(error.to_string().contains("older release"));
    }

    #[test]
    fn an_invalid_cursor_or_client_id_is_refused() {
        let payload = encode("x", None, &new_message(message(), 3));
        for bad in [r#""cursor":"-1""#, r#""cursor":"03""#, r#""cursor":3"#, r#""cursor":null"#] {
            let payload = payload.replace(r#""cursor":"3""#, bad);
            let decoded = decode(payload.as_bytes());
            assert!(
                matches!(decoded, Err(DecodeError::Malformed(_) | DecodeError::NoCursor)),
                "{bad}: {decoded:?}"
            );
        }
        let m = Message { client_id: Some(ClientMessageId::parse("k").unwrap()), ..message() };
        let with_id =
            encode("x", None, &new_message(m, 3)).replace(r#""clientId":"k""#, r#""clientId":"a b""#);
        assert!(matches!(decode(with_id.as_bytes()), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn a_broadcast_has_no_recipients_list() {
        let event = Event::OnlineUsers(vec![UserId::generate(), UserId::generate()]);
        let decoded = decode(encode("i2", None, &event).as_bytes()).unwrap();
        assert_eq!(decoded.to, None);
        assert_eq!(decoded.event, event);
    }

    #[test]
    fn typing_notices_round_trip() {
        let event = Event::Typing { from: UserId::generate(), to: UserId::generate(), is_typing: false };
        assert_eq!(decode(encode("i3", None, &event).as_bytes()).unwrap().event, event);
    }

    #[test]
    fn another_version_is_refused_rather_than_misread() {
        let payload = br#"{"v":2,"origin":"x","to":null,"event":{"type":"somethingNew"}}"#;
        assert!(matches!(decode(payload), Err(DecodeError::Version(2))));
    }

    #[test]
    fn invalid_ids_or_bodies_are_refused() {
        let bad_id = br#"{"v":1,"origin":"x","to":["not-an-id"],"event":{"type":"onlineUsers","users":[]}}"#;
        assert!(matches!(decode(bad_id), Err(DecodeError::Malformed(_))));
        let m = message();
        let empty_body = encode("x", None, &new_message(m.clone(), 1))
            .replace(&serde_json::to_string(m.body.as_str()).unwrap(), "\"   \"");
        assert!(matches!(decode(empty_body.as_bytes()), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode(b"not json"), Err(DecodeError::Malformed(_))));
    }
}
