//! Identifiers. They are generated here (UUIDv7: time-ordered), never by a database, so
//! every storage backend keeps the same ids and an export/import round trip preserves them.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An id string that is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is not a valid id")]
pub struct IdError;

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A fresh id; ids generated later in this process never sort before it.
            pub fn generate() -> Self {
                Self(Uuid::now_v7().hyphenated().to_string())
            }

            /// Parses an id received from outside (a path segment, a stored row).
            pub fn parse(raw: &str) -> Result<Self, IdError> {
                // Only the canonical lower-case hyphenated form is accepted, so that string
                // order and time order agree and one id has one spelling.
                let uuid = Uuid::try_parse(raw).map_err(|_| IdError)?;
                let canonical = uuid.hyphenated().to_string();
                if canonical == raw {
                    Ok(Self(canonical))
                } else {
                    Err(IdError)
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(raw: String) -> Result<Self, IdError> {
                Self::parse(&raw)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

define_id!(
    /// Identifies a user.
    UserId
);
define_id!(
    /// Identifies the conversation of one pair of users.
    ConversationId
);
define_id!(
    /// Identifies a message; within a conversation, a later message has a greater id.
    MessageId
);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn generated_ids_round_trip_through_parse() {
        let id = UserId::generate();
        assert_eq!(UserId::parse(id.as_str()), Ok(id));
    }

    #[test]
    fn later_ids_sort_after_earlier_ones() {
        let ids: Vec<MessageId> = (0..1000).map(|_| MessageId::generate()).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn non_canonical_spellings_are_rejected() {
        let id = UserId::generate();
        assert_eq!(UserId::parse(&id.as_str().to_uppercase()), Err(IdError));
        assert_eq!(UserId::parse(&id.as_str().replace('-', "")), Err(IdError));
        assert_eq!(UserId::parse("507f1f77bcf86cd799439011"), Err(IdError));
        assert_eq!(UserId::parse(""), Err(IdError));
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_canonical_text(raw in ".{0,64}") {
            if let Ok(id) = MessageId::parse(&raw) {
                prop_assert_eq!(id.as_str(), raw.as_str());
            }
        }
    }
}
