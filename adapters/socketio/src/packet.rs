//! The two wire formats, as pure functions over text: Engine.IO v4 packets (a type digit,
//! then data) and the Socket.IO v5 packets carried in Engine.IO `message`s:
//!
//! ```text
//! <type>[<attachments>-][<namespace>,][<ack id>][<JSON payload>]
//! ```
//!
//! Only what a JSON-only, single-namespace server needs is decoded; binary packets are
//! recognised so they can be refused.

use domain::{CursorError, SyncCursor};
use serde_json::Value;

/// Joins packets in one HTTP long-polling body.
pub const SEPARATOR: char = '\x1e';

pub const CLOSE: &str = "1";
pub const PING: &str = "2";
pub const NOOP: &str = "6";
pub const PROBE_PING: &str = "2probe";
pub const PROBE_PONG: &str = "3probe";
pub const UPGRADE: &str = "5";

/// The main namespace, the only one served.
pub const MAIN_NAMESPACE: &str = "/";

/// Ack ids are JavaScript integers: more digits than this can't come from a real client.
const MAX_ACK_DIGITS: usize = 15;

/// Longest namespace echoed back in a refusal; a longer one is treated as malformed.
const MAX_NAMESPACE_LEN: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("empty packet")]
    Empty,
    #[error("unknown packet type")]
    UnknownType,
    #[error("binary packets are not supported")]
    Binary,
    #[error("invalid namespace")]
    BadNamespace,
    #[error("invalid ack id")]
    BadAckId,
    #[error("invalid payload")]
    BadPayload,
    #[error("packet not expected from a client")]
    Unexpected,
}

/// An Engine.IO packet as a client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnginePacket<'a> {
    Open,
    Close,
    Ping(&'a str),
    Pong(&'a str),
    Message(&'a str),
    Upgrade,
    Noop,
}

pub fn decode_engine(text: &str) -> Result<EnginePacket<'_>, PacketError> {
    let Some(&kind) = text.as_bytes().first() else {
        return Err(PacketError::Empty);
    };
    // An ASCII first byte, so the rest starts on a char boundary.
    let data = || &text[1..];
    match kind {
        b'0' => Ok(EnginePacket::Open),
        b'1' => Ok(EnginePacket::Close),
        b'2' => Ok(EnginePacket::Ping(data())),
        b'3' => Ok(EnginePacket::Pong(data())),
        b'4' => Ok(EnginePacket::Message(data())),
        b'5' => Ok(EnginePacket::Upgrade),
        b'6' => Ok(EnginePacket::Noop),
        // Base64 binary data on the polling transport.
        b'b' => Err(PacketError::Binary),
        _ => Err(PacketError::UnknownType),
    }
}

/// A cursor a client handed back: `None` when it gave none (absent, `null` or `""`), an
/// error when what it gave is not a cursor.
pub type SinceArg = Option<Result<SyncCursor, CursorError>>;

/// Reads a `since` given as text (a query parameter, or `auth.since`), by the rule every
/// transport shares (`/ws` too): [`SyncCursor::parse_optional`].
pub fn since_text(raw: Option<&str>) -> SinceArg {
    SyncCursor::parse_optional(raw).transpose()
}

/// A Socket.IO packet as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum SocketPacket<'a> {
    /// `auth.token` of the client's options, when it sent one as a string, and `auth.since`,
    /// where its message stream resumes (cursors are strings: anything else is an error).
    Connect {
        namespace: &'a str,
        token: Option<String>,
        since: SinceArg,
    },
    Disconnect {
        namespace: &'a str,
    },
    /// The first argument after the name, if any; further arguments are ignored.
    Event {
        namespace: &'a str,
        ack: Option<u64>,
        name: String,
        data: Option<Value>,
    },
    Ack {
        namespace: &'a str,
        ack: u64,
    },
}

impl SocketPacket<'_> {
    pub fn namespace(&self) -> &str {
        match self {
            SocketPacket::Connect { namespace, .. }
            | SocketPacket::Disconnect { namespace }
            | SocketPacket::Event { namespace, .. }
            | SocketPacket::Ack { namespace, .. } => namespace,
        }
    }
}

pub fn decode_socket(text: &str) -> Result<SocketPacket<'_>, PacketError> {
    let Some(&kind) = text.as_bytes().first() else {
        return Err(PacketError::Empty);
    };
    match kind {
        b'0'..=b'4' => {}
        b'5' | b'6' => return Err(PacketError::Binary),
        _ => return Err(PacketError::UnknownType),
    }
    let rest = &text[1..];

    let (namespace, rest) = match rest.strip_prefix('/') {
        Some(_) => match rest.find(',') {
            Some(comma) => (&rest[..comma], &rest[comma + 1..]),
            // `1/admin`: a namespace ending the packet needs no comma.
            None => (rest, ""),
        },
        None => (MAIN_NAMESPACE, rest),
    };
    if namespace.len() > MAX_NAMESPACE_LEN || !namespace.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(PacketError::BadNamespace);
    }

    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (ack, payload) = match digits {
        0 => (None, rest),
        n if n > MAX_ACK_DIGITS => return Err(PacketError::BadAckId),
        n => (Some(rest[..n].parse::<u64>().map_err(|_| PacketError::BadAckId)?), &rest[n..]),
    };

    match kind {
        b'0' => {
            if ack.is_some() {
                return Err(PacketError::BadPayload);
            }
            let (token, since) = match payload {
                "" => (None, None),
                json => match serde_json::from_str::<Value>(json) {
                    Ok(Value::Object(auth)) => {
                        let token = match auth.get("token") {
                            Some(Value::String(token)) if !token.is_empty() => Some(token.clone()),
                            _ => None,
                        };
                        let since = match auth.get("since") {
                            None | Some(Value::Null) => None,
                            Some(Value::String(since)) => since_text(Some(since)),
                            Some(_) => Some(Err(CursorError)),
                        };
                        (token, since)
                    }
                    _ => return Err(PacketError::BadPayload),
                },
            };
            Ok(SocketPacket::Connect { namespace, token, since })
        }
        b'1' => Ok(SocketPacket::Disconnect { namespace }),
        b'2' => {
            let Ok(Value::Array(arguments)) = serde_json::from_str::<Value>(payload) else {
                return Err(PacketError::BadPayload);
            };
            let mut arguments = arguments.into_iter();
            let Some(Value::String(name)) = arguments.next() else {
                return Err(PacketError::BadPayload);
            };
            Ok(SocketPacket::Event { namespace, ack, name, data: arguments.next() })
        }
        b'3' => {
            let ack = ack.ok_or(PacketError::BadAckId)?;
            if !matches!(serde_json::from_str::<Value>(payload), Ok(Value::Array(_))) {
                return Err(PacketError::BadPayload);
            }
            Ok(SocketPacket::Ack { namespace, ack })
        }
        // CONNECT_ERROR only ever goes from server to client.
        _ => Err(PacketError::Unexpected),
    }
}

/// The Engine.IO handshake: `0{"sid",...}`.
pub fn open(
    sid: &str,
    upgrades: &[&str],
    ping_interval_ms: u128,
    ping_timeout_ms: u128,
    max_payload: usize,
) -> String {
    let open = serde_json::json!({
        "sid": sid,
        "upgrades": upgrades,
        "pingInterval": ping_interval_ms,
        "pingTimeout": ping_timeout_ms,
        "maxPayload": max_payload,
    });
    format!("0{open}")
}

/// The answer to a client's `ping` (only probes in practice): `3` with the same data.
pub fn pong(data: &str) -> String {
    format!("3{data}")
}

/// CONNECT accepted: `40{"sid":...}`.
pub fn connect_ok(sid: &str) -> String {
    format!("40{}", serde_json::json!({ "sid": sid }))
}

/// CONNECT refused: `44{"message":...}`, which the client raises as `connect_error`.
pub fn connect_error(namespace: &str, message: &str) -> String {
    let body = serde_json::json!({ "message": message });
    if namespace == MAIN_NAMESPACE {
        format!("44{body}")
    } else {
        format!("44{namespace},{body}")
    }
}

/// An EVENT to the main namespace: `42["name",data]`, `data` already JSON.
pub fn event(name: &str, data: &str) -> String {
    // Serializing a string cannot fail.
    let name = serde_json::to_string(name).expect("a string serializes");
    format!("42[{name},{data}]")
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::Cursor;
    use serde_json::json;

    #[test]
    fn engine_packets_are_one_digit_then_data() {
        assert_eq!(decode_engine("2probe"), Ok(EnginePacket::Ping("probe")));
        assert_eq!(decode_engine("3"), Ok(EnginePacket::Pong("")));
        assert_eq!(decode_engine("40"), Ok(EnginePacket::Message("0")));
        assert_eq!(decode_engine("4é"), Ok(EnginePacket::Message("é")));
        assert_eq!(decode_engine("1"), Ok(EnginePacket::Close));
        assert_eq!(decode_engine("5"), Ok(EnginePacket::Upgrade));
        assert_eq!(decode_engine("6"), Ok(EnginePacket::Noop));
    }

    #[test]
    fn an_empty_or_unknown_engine_packet_is_refused() {
        assert_eq!(decode_engine(""), Err(PacketError::Empty));
        assert_eq!(decode_engine("7"), Err(PacketError::UnknownType));
        assert_eq!(decode_engine("x42[]"), Err(PacketError::UnknownType));
        assert_eq!(decode_engine("é"), Err(PacketError::UnknownType));
    }

    #[test]
    fn base64_binary_on_polling_is_refused() {
        assert_eq!(decode_engine("bAQID"), Err(PacketError::Binary));
    }

    #[test]
    fn a_bare_connect_has_no_token() {
        assert_eq!(
            decode_socket("0"),
            Ok(SocketPacket::Connect { namespace: "/", token: None, since: None })
        );
    }

    #[test]
    fn a_connect_carries_the_auth_token() {
        assert_eq!(
            decode_socket(r#"0{"token":"abc","other":1}"#),
            Ok(SocketPacket::Connect { namespace: "/", token: Some("abc".into()), since: None })
        );
        // A token that is not a non-empty string is no token.
        for auth in [r#"0{"token":42}"#, r#"0{"token":""}"#, r#"0{}"#] {
            let expected = SocketPacket::Connect { namespace: "/", token: None, since: None };
            assert_eq!(decode_socket(auth), Ok(expected));
        }
    }

    #[test]
    fn a_connect_carries_where_the_stream_resumes() {
        let since = |packet: &str| match decode_socket(packet) {
            Ok(SocketPacket::Connect { since, .. }) => since,
            other => panic!("{packet}: {other:?}"),
        };
        let at = |position| Some(Ok(SyncCursor::at(Cursor::new(position).unwrap())));
        assert_eq!(since(r#"0{"token":"t","since":"42"}"#), at(42));
        assert_eq!(since(r#"0{"since":"0"}"#), at(0));
        let group = domain::ConversationId::generate();
        let with_group = SyncCursor { stream: Cursor::new(3).unwrap(), groups: [(group.clone(), 9)].into() };
        assert_eq!(since(&format!(r#"0{{"since":"3~{group}.9"}}"#)), Some(Ok(with_group)));
        // Not given.
        for packet in [r#"0{"token":"t"}"#, r#"0{"since":null}"#, r#"0{"since":""}"#] {
            assert_eq!(since(packet), None, "{packet}");
        }
        // Given, but not a cursor: cursors are canonical decimal strings.
        let malformed = [
            r#"0{"since":42}"#,
            r#"0{"since":"abc"}"#,
            r#"0{"since":"-1"}"#,
            r#"0{"since":"007"}"#,
            r#"0{"since":["1"]}"#,
            r#"0{"since":"1~"}"#,
        ];
        for packet in malformed {
            assert_eq!(since(packet), Some(Err(CursorError)), "{packet}");
        }
        assert_eq!(since_text(Some("7")), at(7));
        assert_eq!(since_text(Some("")), None);
        assert_eq!(since_text(Some("x")), Some(Err(CursorError)));
    }

    #[test]
    fn a_connect_whose_auth_is_not_an_object_is_malformed() {
        for packet in ["0[1]", "0\"token\"", "0{", "0{\"token\":\"a\"}x", "01{}"] {
            assert_eq!(decode_socket(packet), Err(PacketError::BadPayload), "{packet}");
        }
    }

    #[test]
    fn namespaces_end_at_a_comma_or_the_end() {
        assert_eq!(
            decode_socket("0/admin,"),
            Ok(SocketPacket::Connect { namespace: "/admin", token: None, since: None })
        );
        assert_eq!(
            decode_socket(r#"0/admin,{"token":"t"}"#),
            Ok(SocketPacket::Connect { namespace: "/admin", token: Some("t".into()), since: None })
        );
        assert_eq!(decode_socket("1/admin"), Ok(SocketPacket::Disconnect { namespace: "/admin" }));
        let event = decode_socket(r#"2/chat,["hi"]"#).unwrap();
        assert_eq!(event.namespace(), "/chat");
    }

    #[test]
    fn namespaces_that_could_not_be_echoed_safely_are_malformed() {
        assert_eq!(decode_socket("0/a b,"), Err(PacketError::BadNamespace));
        assert_eq!(decode_socket("0/a\u{1e}b,"), Err(PacketError::BadNamespace));
        assert_eq!(decode_socket("0/é,"), Err(PacketError::BadNamespace));
        let long = format!("0/{},", "a".repeat(MAX_NAMESPACE_LEN));
        assert_eq!(decode_socket(&long), Err(PacketError::BadNamespace));
    }

    #[test]
    fn an_event_has_a_name_and_its_first_argument() {
        assert_eq!(
            decode_socket(r#"2["typing",{"to":"u1","isTyping":true},"extra"]"#),
            Ok(SocketPacket::Event {
                namespace: "/",
                ack: None,
                name: "typing".into(),
                data: Some(json!({"to": "u1", "isTyping": true})),
            })
        );
        assert_eq!(
            decode_socket(r#"2["ping"]"#),
            Ok(SocketPacket::Event { namespace: "/", ack: None, name: "ping".into(), data: None })
        );
    }

    #[test]
    fn an_event_may_ask_for_an_ack() {
        let packet = decode_socket(r#"2/chat,12["typing",{}]"#).unwrap();
        assert!(matches!(packet, SocketPacket::Event { ack: Some(12), namespace: "/chat", .. }));
        let packet = decode_socket(r#"27["typing"]"#).unwrap();
        assert!(matches!(packet, SocketPacket::Event { ack: Some(7), .. }));
    }

    #[test]
    fn an_ack_from_the_client_needs_an_id_and_an_array() {
        assert_eq!(decode_socket("35[]"), Ok(SocketPacket::Ack { namespace: "/", ack: 5 }));
        assert_eq!(decode_socket("3[]"), Err(PacketError::BadAckId));
        assert_eq!(decode_socket("35{}"), Err(PacketError::BadPayload));
    }

    #[test]
    fn absurd_ack_ids_are_malformed() {
        let packet = format!("2{}[\"x\"]", "9".repeat(MAX_ACK_DIGITS + 1));
        assert_eq!(decode_socket(&packet), Err(PacketError::BadAckId));
    }

    #[test]
    fn events_without_a_string_name_or_valid_json_are_malformed() {
        for packet in [
            "2",
            "2[]",
            "2[1,2]",
            "2{\"a\":1}",
            "2[\"typing\"",
            "2[\"typing\",]",
            "2\"typing\"",
            "2[\"typing\"] trailing",
            "2null",
        ] {
            assert_eq!(decode_socket(packet), Err(PacketError::BadPayload), "{packet}");
        }
    }

    #[test]
    fn truncated_or_unknown_socket_packets_are_malformed() {
        assert_eq!(decode_socket(""), Err(PacketError::Empty));
        assert_eq!(decode_socket("7[]"), Err(PacketError::UnknownType));
        assert_eq!(decode_socket("a"), Err(PacketError::UnknownType));
        assert_eq!(decode_socket("é"), Err(PacketError::UnknownType));
        assert_eq!(decode_socket("2/"), Err(PacketError::BadPayload));
        assert_eq!(decode_socket("2/chat,"), Err(PacketError::BadPayload));
    }

    #[test]
    fn binary_packets_are_recognised_to_be_refused() {
        assert_eq!(decode_socket(r#"51-["upload",{"_placeholder":true,"num":0}]"#), Err(PacketError::Binary));
        assert_eq!(decode_socket("61-/chat,3[]"), Err(PacketError::Binary));
    }

    #[test]
    fn connect_error_is_never_accepted_from_a_client() {
        assert_eq!(decode_socket(r#"4{"message":"x"}"#), Err(PacketError::Unexpected));
    }

    #[test]
    fn huge_payloads_parse_without_trouble_and_deep_nesting_is_refused() {
        let big = format!("2[\"typing\",\"{}\"]", "x".repeat(1 << 20));
        assert!(decode_socket(&big).is_ok());
        // serde_json's recursion limit keeps a hostile payload from exhausting the stack.
        let deep = format!("2[\"typing\",{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(decode_socket(&deep), Err(PacketError::BadPayload));
    }

    #[test]
    fn multibyte_text_never_splits_inside_a_char() {
        for packet in ["2/é", "2é", "21é", "0é", "2/chat,é", "2/chat,1é", "2[\"é\",\"é\"]"] {
            let _ = decode_socket(packet);
        }
    }

    #[test]
    fn encoded_packets_match_the_protocol() {
        let open: Value = serde_json::from_str(&open("s1", &["websocket"], 25000, 20000, 1000)[1..]).unwrap();
        assert_eq!(
            open,
            json!({"sid":"s1","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000})
        );
        assert_eq!(connect_ok("abc"), r#"40{"sid":"abc"}"#);
        assert_eq!(connect_error("/", "no"), r#"44{"message":"no"}"#);
        assert_eq!(
            connect_error("/admin", "Invalid namespace"),
            r#"44/admin,{"message":"Invalid namespace"}"#
        );
        assert_eq!(event("newMessage", r#"{"a":1}"#), r#"42["newMessage",{"a":1}]"#);
        assert_eq!(pong("probe"), PROBE_PONG);
    }
}
