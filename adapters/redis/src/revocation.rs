//! What instances say to each other on the revocation channel: one JSON object per revoked
//! token.
//!
//! Versioned like the events (see [`crate::bus`]), and for the same reason: a message of an
//! unknown version is skipped, never misread. Fields added within a version are ignored by
//! older readers.

use application::ports::Revocation;
use domain::Timestamp;
use serde::{Deserialize, Serialize};

const VERSION: u8 = 1;

/// The longest token id that travels (token ids are ours, and far shorter: this only keeps
/// a bad message from filling memory).
pub const MAX_TOKEN_ID_CHARS: usize = 200;

/// One revocation as it travels between instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// The instance that made the revocation; it holds it already.
    pub origin: String,
    pub revocation: Revocation,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a token id must have 1 to {MAX_TOKEN_ID_CHARS} characters")]
pub struct InvalidTokenId;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("revocation message of unknown version {0}")]
    Version(u8),
    #[error("malformed revocation message")]
    Malformed(#[from] serde_json::Error),
    #[error(transparent)]
    TokenId(#[from] InvalidTokenId),
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    v: u8,
    origin: String,
    token_id: String,
    expires_at: Timestamp,
}

fn check_token_id(token_id: &str) -> Result<(), InvalidTokenId> {
    if token_id.is_empty() || token_id.chars().count() > MAX_TOKEN_ID_CHARS {
        return Err(InvalidTokenId);
    }
    Ok(())
}

/// Refuses a token id that no reader would accept.
pub fn encode(origin: &str, revocation: &Revocation) -> Result<String, InvalidTokenId> {
    check_token_id(&revocation.token_id)?;
    let envelope = Envelope {
        v: VERSION,
        origin: origin.to_owned(),
        token_id: revocation.token_id.clone(),
        expires_at: revocation.expires_at,
    };
    // Two strings, a number and a timestamp: serializing them cannot fail.
    Ok(serde_json::to_string(&envelope).expect("revocation messages serialize"))
}

pub fn decode(payload: &[u8]) -> Result<Announcement, DecodeError> {
    let v = crate::bus::version_of(payload)?;
    if v != VERSION {
        return Err(DecodeError::Version(v));
    }
    let envelope: Envelope = serde_json::from_slice(payload)?;
    check_token_id(&envelope.token_id)?;
    Ok(Announcement {
        origin: envelope.origin,
        revocation: Revocation { token_id: envelope.token_id, expires_at: envelope.expires_at },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn revocation(token_id: &str) -> Revocation {
        Revocation {
            token_id: token_id.into(),
            expires_at: chrono::Utc.timestamp_nanos(1_767_323_045_123_456_789),
        }
    }

    #[test]
    fn a_revocation_survives_the_round_trip_exactly() {
        let r = revocation("0197a3c2-5a1b-7c3d-8e4f-0123456789ab");
        let decoded = decode(encode("i1", &r).unwrap().as_bytes()).unwrap();
        assert_eq!(decoded, Announcement { origin: "i1".into(), revocation: r });
    }

    #[test]
    fn the_fields_have_their_documented_names() {
        let payload = encode("i1", &revocation("t-1")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(json["v"], 1);
        assert_eq!(json["origin"], "i1");
        assert_eq!(json["tokenId"], "t-1");
        assert_eq!(json["expiresAt"], "2026-01-02T03:04:05.123456789Z");
    }

    #[test]
    fn fields_added_within_the_version_are_ignored() {
        let payload =
            br#"{"v":1,"origin":"x","tokenId":"t","expiresAt":"2026-01-02T03:04:05Z","reason":"logout"}"#;
        assert_eq!(decode(payload).unwrap().revocation.token_id, "t");
    }

    #[test]
    fn another_version_is_refused_rather_than_misread() {
        let payload = br#"{"v":2,"origin":"x","tokenIds":["t"],"until":1}"#;
        assert!(matches!(decode(payload), Err(DecodeError::Version(2))));
        let payload = encode("x", &revocation("t")).unwrap().replace(r#""v":1"#, r#""v":0"#);
        assert!(matches!(decode(payload.as_bytes()), Err(DecodeError::Version(0))));
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = encode("x", &revocation("t")).unwrap();
        let bad = [
            "not json".to_owned(),
            "{}".to_owned(),
            r#"{"v":"1"}"#.to_owned(),
            r#"{"v":1,"origin":"x","expiresAt":"2026-01-02T03:04:05Z"}"#.to_owned(),
            good.replace(r#""tokenId":"t""#, r#""tokenId":7"#),
            good.replace(r#""tokenId":"t""#, r#""tokenId":null"#),
            good.replace("2026-01-02T03:04:05.123456789Z", "tomorrow"),
            good.replace(r#""origin":"x""#, r#""origin":null"#),
        ];
        for payload in bad {
            assert!(matches!(decode(payload.as_bytes()), Err(DecodeError::Malformed(_))), "{payload}");
        }
    }

    #[test]
    fn token_ids_are_bounded_both_ways() {
        let longest = "é".repeat(MAX_TOKEN_ID_CHARS);
        let payload = encode("x", &revocation(&longest)).unwrap();
        assert_eq!(decode(payload.as_bytes()).unwrap().revocation.token_id, longest);

        let too_long = "a".repeat(MAX_TOKEN_ID_CHARS + 1);
        assert_eq!(encode("x", &revocation(&too_long)), Err(InvalidTokenId));
        assert_eq!(encode("x", &revocation("")), Err(InvalidTokenId));

        let good = encode("x", &revocation("t")).unwrap();
        for bad in [too_long.as_str(), ""] {
            let payload = good.replace(r#""tokenId":"t""#, &format!(r#""tokenId":"{bad}""#));
            assert!(matches!(decode(payload.as_bytes()), Err(DecodeError::TokenId(_))), "{payload}");
        }
    }
}
