//! What instances say to each other on the bus channel: one JSON object per event.
//!
//! The shape is this crate's own (not the client wire format, not the domain's serde), and
//! carries a version so that instances of two releases can share a bus during a rolling
//! upgrade: a message of an unknown version is skipped, never misread.

use application::ports::Event;
use domain::{ConversationId, Message, MessageBody, MessageId, Timestamp, UserId};
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
            Event::NewMessage(m) => WireEvent::NewMessage {
                id: m.id,
                conversation_id: m.conversation_id,
                sender_id: m.sender_id,
                receiver_id: m.receiver_id,
                body: m.body,
                created_at: m.created_at,
            },
            Event::OnlineUsers(users) => WireEvent::OnlineUsers { users },
            Event::Typing { from, to, is_typing } => WireEvent::Typing { from, to, is_typing },
        }
    }
}

impl From<WireEvent> for Event {
    fn from(event: WireEvent) -> Self {
        match event {
            WireEvent::NewMessage { id, conversation_id, sender_id, receiver_id, body, created_at } => {
                Event::NewMessage(Message { id, conversation_id, sender_id, receiver_id, body, created_at })
            }
            WireEvent::OnlineUsers { users } => Event::OnlineUsers(users),
            WireEvent::Typing { from, to, is_typing } => Event::Typing { from, to, is_typing },
        }
    }
}

pub fn encode(origin: &str, to: Option<&[UserId]>, event: &Event) -> String {
    let envelope = Envelope {
        v: VERSION,
        origin: origin.to_owned(),
        to: to.map(<[UserId]>::to_vec),
        event: WireEvent::from(event),
    };
    // Strings, ids, a bool and a timestamp: serializing them cannot fail.
    serde_json::to_string(&envelope).expect("bus messages serialize")
}

pub fn decode(payload: &[u8]) -> Result<BusMessage, DecodeError> {
    #[derive(Deserialize)]
    struct Versioned {
        v: u8,
    }
    let Versioned { v } = serde_json::from_slice(payload)?;
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    // Ids and bodies are checked again on the way in: a bus is an input like any other.
    let envelope: Envelope = serde_json::from_slice(payload)?;
    Ok(BusMessage { origin: envelope.origin, to: envelope.to, event: envelope.event.into() })
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
        }
    }

    #[test]
    fn a_new_message_survives_the_round_trip_exactly() {
        let m = message();
        let to = vec![m.receiver_id.clone(), m.sender_id.clone()];
        let event = Event::NewMessage(m);
        let decoded = decode(encode("i1", Some(&to), &event).as_bytes()).unwrap();
        assert_eq!(decoded, BusMessage { origin: "i1".into(), to: Some(to), event });
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
        let empty_body = encode("x", None, &Event::NewMessage(m.clone()))
            .replace(&serde_json::to_string(m.body.as_str()).unwrap(), "\"   \"");
        assert!(matches!(decode(empty_body.as_bytes()), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode(b"not json"), Err(DecodeError::Malformed(_))));
    }
}
