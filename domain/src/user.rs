//! Users and the value types a user is made of.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{text, Timestamp, UserId};

/// A login name: 3–32 characters of `[A-Za-z0-9_.-]`, stored as given and unique
/// case-insensitively (see [`Username::normalized`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    #[error("must be at least {min} characters")]
    TooShort { min: usize },
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("may contain only letters, digits, '_', '.' and '-'")]
    InvalidCharacter,
}

impl Username {
    pub const MIN: usize = 3;
    pub const MAX: usize = 32;

    pub fn parse(raw: &str) -> Result<Self, UsernameError> {
        if !raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(UsernameError::InvalidCharacter);
        }
        // All accepted characters are ASCII, so bytes are characters from here on.
        match raw.len() {
            n if n < Self::MIN => Err(UsernameError::TooShort { min: Self::MIN }),
            n if n > Self::MAX => Err(UsernameError::TooLong { max: Self::MAX }),
            _ => Ok(Self(raw.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form uniqueness and look-ups use: `Alice` and `alice` are the same user.
    pub fn normalized(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

impl TryFrom<String> for Username {
    type Error = UsernameError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<Username> for String {
    fn from(name: Username) -> String {
        name.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A display name: 1–64 characters once surrounding white space is trimmed off, starting
/// with a visible one. Control, text-direction and other invisible characters are refused
/// (they let a name pose as another or look empty); joiners that emoji sequences and some
/// scripts need are kept (see [`crate::text`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FullName(String);

text::name_error! {
    /// Why a full name is refused.
    FullNameError
}

impl FullName {
    pub const MAX: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, FullNameError> {
        Ok(Self(text::new_name(raw, Self::MAX)?.to_owned()))
    }

    /// A name accepted earlier (read from a store, or from a dump of one), checked by the
    /// rules it was made under — trimmed, 1–64 characters, no control characters — but not
    /// by the visibility rules of [`FullName::parse`], which came later: names kept from
    /// before stay readable and move between stores.
    pub fn stored(raw: &str) -> Result<Self, FullNameError> {
        Ok(Self(text::stored_name(raw, Self::MAX)?.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FullName {
    type Error = FullNameError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}

impl From<FullName> for String {
    fn from(name: FullName) -> String {
        name.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Male,
    Female,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be one of \"male\", \"female\", \"other\"")]
pub struct GenderError;

impl Gender {
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
        }
    }
}

impl FromStr for Gender {
    type Err = GenderError;
    fn from_str(raw: &str) -> Result<Self, GenderError> {
        match raw {
            "male" => Ok(Gender::Male),
            "female" => Ok(Gender::Female),
            "other" => Ok(Gender::Other),
            _ => Err(GenderError),
        }
    }
}

/// A picture: an `http(s)` URL of the user's choosing, at most 2048 characters, or the
/// server's own picture of a user (`/api/v1/user/<id>/avatar`, the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Avatar(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AvatarError {
    #[error("must be an http(s) URL")]
    NotAUrl,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
}

impl Avatar {
    pub const MAX: usize = 2048;
    /// Where the server serves the picture it draws for a user: `PREFIX <id> SUFFIX`.
    const SERVED_PREFIX: &'static str = "/api/v1/user/";
    const SERVED_SUFFIX: &'static str = "/avatar";
    /// The outside service earlier versions made default avatars point at.
    const FORMER_DEFAULT: &'static str = "https://avatar.iran.liara.run/";

    /// A URL a user gives.
    pub fn parse(raw: &str) -> Result<Self, AvatarError> {
        let raw = raw.trim();
        if raw.len() > Self::MAX {
            return Err(AvatarError::TooLong { max: Self::MAX });
        }
        let rest = raw
            .strip_prefix("https://")
            .or_else(|| raw.strip_prefix("http://"))
            .ok_or(AvatarError::NotAUrl)?;
        let host_ok = rest.split(['/', '?', '#']).next().is_some_and(|host| !host.is_empty());
        if !host_ok || raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AvatarError::NotAUrl);
        }
        Ok(Self(raw.to_owned()))
    }

    /// The picture a user gets when they choose none: the one the server draws for them
    /// (initials on a colour of their id). It is on the server, so that showing a user list
    /// tells no other site who is on it.
    pub fn default_for(user: &UserId) -> Self {
        Self(format!("{}{user}{}", Self::SERVED_PREFIX, Self::SERVED_SUFFIX))
    }

    /// The avatar to show for `owner`: as stored, except a default of earlier versions (a
    /// URL of an outside service), which is shown as the server's own default instead.
    pub fn shown_for(&self, owner: &UserId) -> Self {
        if self.0.starts_with(Self::FORMER_DEFAULT) {
            Self::default_for(owner)
        } else {
            self.clone()
        }
    }

    /// An avatar read back from a store or a dump: a URL a user gave, or a default.
    pub fn stored(raw: &str) -> Result<Self, AvatarError> {
        let id =
            raw.strip_prefix(Self::SERVED_PREFIX).and_then(|rest| rest.strip_suffix(Self::SERVED_SUFFIX));
        match id.map(UserId::parse) {
            Some(Ok(id)) => Ok(Self::default_for(&id)),
            _ => Self::parse(raw),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Avatar {
    type Error = AvatarError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::stored(&raw)
    }
}

impl From<Avatar> for String {
    fn from(avatar: Avatar) -> String {
        avatar.0
    }
}

/// A plain-text password on its way to the hasher: 8–72 bytes (bcrypt ignores bytes past 72,
/// so a longer one would be silently truncated). It never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("must be at least {min} bytes")]
    TooShort { min: usize },
    #[error("must be at most {max} bytes")]
    TooLong { max: usize },
}

impl Password {
    pub const MIN_BYTES: usize = 8;
    pub const MAX_BYTES: usize = 72;

    pub fn parse(raw: &str) -> Result<Self, PasswordError> {
        match raw.len() {
            n if n < Self::MIN_BYTES => Err(PasswordError::TooShort { min: Self::MIN_BYTES }),
            n if n > Self::MAX_BYTES => Err(PasswordError::TooLong { max: Self::MAX_BYTES }),
            _ => Ok(Self(raw.to_owned())),
        }
    }

    /// A password checked only for bcrypt's byte limit, for login: an account must not become
    /// unreachable because the length rules changed after it was made.
    pub fn for_login(raw: &str) -> Result<Self, PasswordError> {
        if raw.len() > Self::MAX_BYTES {
            return Err(PasswordError::TooLong { max: Self::MAX_BYTES });
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// A password hash in the hasher's own encoding (a bcrypt string). It never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordHashError {
    #[error("is not a bcrypt hash ($2a$, $2b$ or $2y$, a two-digit cost, 53 characters of salt and hash)")]
    NotBcrypt,
    #[error("has cost {cost}, outside bcrypt's {min}..={max}")]
    CostOutOfRange { cost: u32, min: u32, max: u32 },
}

impl PasswordHash {
    /// The work factors bcrypt defines.
    pub const BCRYPT_COSTS: std::ops::RangeInclusive<u32> = 4..=31;

    /// A hash as the hasher made it or the store kept it; one from elsewhere (an import) is
    /// checked with [`PasswordHash::bcrypt_cost`].
    pub fn new(encoded: String) -> Self {
        Self(encoded)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The work factor of a well-formed bcrypt hash: `$2a$`, `$2b$` or `$2y$`, two digits of
    /// cost, `$`, then 22 characters of salt and 31 of hash in bcrypt's base64 (`./A-Za-z0-9`).
    pub fn bcrypt_cost(&self) -> Result<u32, PasswordHashError> {
        let rest = ["$2a$", "$2b$", "$2y$"]
            .iter()
            .find_map(|prefix| self.0.strip_prefix(prefix))
            .ok_or(PasswordHashError::NotBcrypt)?;
        let (cost, encoded) = rest.split_once('$').ok_or(PasswordHashError::NotBcrypt)?;
        let well_formed = cost.len() == 2
            && cost.bytes().all(|b| b.is_ascii_digit())
            && encoded.len() == 53
            && encoded.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
        if !well_formed {
            return Err(PasswordHashError::NotBcrypt);
        }
        let cost: u32 = cost.parse().map_err(|_| PasswordHashError::NotBcrypt)?;
        if !Self::BCRYPT_COSTS.contains(&cost) {
            let (min, max) = (*Self::BCRYPT_COSTS.start(), *Self::BCRYPT_COSTS.end());
            return Err(PasswordHashError::CostOutOfRange { cost, min, max });
        }
        Ok(cost)
    }
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: UserId,
    pub full_name: FullName,
    pub username: Username,
    pub gender: Option<Gender>,
    pub avatar: Avatar,
    pub password_hash: PasswordHash,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn username_keeps_its_case_but_normalizes_to_lower_case() {
        let name = Username::parse("Alice_B.c-9").unwrap();
        assert_eq!(name.as_str(), "Alice_B.c-9");
        assert_eq!(name.normalized(), "alice_b.c-9");
    }

    #[test]
    fn username_length_limits_are_inclusive() {
        assert!(Username::parse("abc").is_ok());
        assert!(Username::parse(&"a".repeat(32)).is_ok());
        assert_eq!(Username::parse("ab"), Err(UsernameError::TooShort { min: 3 }));
        assert_eq!(Username::parse(&"a".repeat(33)), Err(UsernameError::TooLong { max: 32 }));
    }

    #[test]
    fn username_rejects_spaces_operators_and_non_ascii() {
        for bad in ["a b c", "$gt", "{\"$ne\":1}", "josé", "ab\0c", "a/b/c"] {
            assert_eq!(Username::parse(bad), Err(UsernameError::InvalidCharacter), "{bad}");
        }
    }

    #[test]
    fn full_name_is_trimmed_and_bounded() {
        assert_eq!(FullName::parse("  Ada Lovelace ").unwrap().as_str(), "Ada Lovelace");
        assert_eq!(FullName::parse("   "), Err(FullNameError::Empty));
        assert!(FullName::parse(&"é".repeat(64)).is_ok());
        assert_eq!(FullName::parse(&"é".repeat(65)), Err(FullNameError::TooLong { max: 64 }));
    }

    #[test]
    fn full_name_with_control_characters_is_rejected() {
        for raw in ["Ada\0", "Ada\nLovelace", "\u{7}Ada"] {
            assert_eq!(FullName::parse(raw), Err(FullNameError::ControlCharacter), "{raw:?}");
        }
    }

    #[test]
    fn full_name_with_text_direction_or_invisible_characters_is_rejected() {
        for raw in [
            "Ada\u{202E}ecalevol",
            "\u{2067}Ada\u{2069}",
            "Ada\u{200F}",
            "Ada\u{061C}",
            "A\u{200B}da",
            "Ada\u{FEFF}",
            "Ada\u{E0041}\u{E0042}",
            "\u{3164}",
            "\u{2800}",
        ] {
            assert_eq!(FullName::parse(raw), Err(FullNameError::InvisibleCharacter), "{raw:?}");
        }
    }

    #[test]
    fn a_stored_full_name_is_held_to_the_rules_it_was_made_under() {
        assert_eq!(FullName::stored(" Ada\u{202E} ").unwrap().as_str(), "Ada\u{202E}");
        assert_eq!(FullName::stored("\u{200D}").unwrap().as_str(), "\u{200D}");
        assert_eq!(FullName::stored("Ada\n"), Ok(FullName("Ada".into())));
        assert_eq!(FullName::stored("A\nda"), Err(FullNameError::ControlCharacter));
        assert_eq!(FullName::stored(" "), Err(FullNameError::Empty));
    }

    #[test]
    fn full_name_must_start_with_a_visible_character() {
        for raw in ["\u{200D}", "\u{200D}Ada", " \u{FE0F} Ada", "\u{200C}\u{200D}"] {
            assert_eq!(FullName::parse(raw), Err(FullNameError::InvisibleStart), "{raw:?}");
        }
    }

    #[test]
    fn full_name_keeps_emoji_sequences_and_every_script() {
        for raw in [
            "👩\u{200D}👩\u{200D}👧 family",
            "Ada ❤\u{FE0F}",
            "👍🏽",
            "می\u{200C}خواهم",
            "Zoë Ñúñez",
            "محمد",
            "דוד",
            "山田 太郎",
            "Ελένη",
            "देवनागरी",
        ] {
            assert_eq!(FullName::parse(raw).map(|n| n.as_str().to_owned()), Ok(raw.to_owned()), "{raw:?}");
        }
    }

    #[test]
    fn password_limits_count_bytes_not_characters() {
        assert!(Password::parse("12345678").is_ok());
        assert_eq!(Password::parse("1234567"), Err(PasswordError::TooShort { min: 8 }));
        // 24 three-byte characters are 72 bytes: allowed; one more byte is not.
        assert!(Password::parse(&"€".repeat(24)).is_ok());
        assert_eq!(Password::parse(&format!("{}a", "€".repeat(24))), Err(PasswordError::TooLong { max: 72 }));
    }

    #[test]
    fn secrets_never_print() {
        let password = Password::parse("hunter22hunter22").unwrap();
        assert!(!format!("{password:?}").contains("hunter22"));
        let hash = PasswordHash::new("$2b$10$abcdefghijklmnopqrstuv".into());
        assert!(!format!("{hash:?}").contains("abcdefgh"));
    }

    const HASH_BODY: &str = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy";

    #[test]
    fn bcrypt_hashes_of_every_variant_give_their_cost() {
        for (raw, cost) in [("$2a$04$", 4), ("$2b$10$", 10), ("$2y$31$", 31)] {
            let hash = PasswordHash::new(format!("{raw}{HASH_BODY}"));
            assert_eq!(hash.bcrypt_cost(), Ok(cost), "{raw}");
        }
    }

    #[test]
    fn malformed_bcrypt_hashes_are_told_apart() {
        for raw in [
            String::new(),
            "not a hash".to_owned(),
            format!("$2x$10${HASH_BODY}"),
            format!("$1$10${HASH_BODY}"),
            format!("$2b$1${HASH_BODY}"),
            format!("$2b$+1${HASH_BODY}"),
            format!("$2b$10${}", &HASH_BODY[1..]),
            format!("$2b$10${HASH_BODY}x"),
            format!("$2b$10${}!", &HASH_BODY[1..]),
            format!("$2b$10$${}", &HASH_BODY[1..]),
        ] {
            assert_eq!(
                PasswordHash::new(raw.clone()).bcrypt_cost(),
                Err(PasswordHashError::NotBcrypt),
                "{raw}"
            );
        }
        for cost in ["00", "03", "32", "99"] {
            let hash = PasswordHash::new(format!("$2b${cost}${HASH_BODY}"));
            assert!(matches!(hash.bcrypt_cost(), Err(PasswordHashError::CostOutOfRange { .. })), "{cost}");
        }
    }

    #[test]
    fn gender_accepts_only_the_three_values() {
        assert_eq!("female".parse(), Ok(Gender::Female));
        assert_eq!("Female".parse::<Gender>(), Err(GenderError));
        assert_eq!("".parse::<Gender>(), Err(GenderError));
    }

    #[test]
    fn avatar_must_be_an_http_url() {
        assert!(Avatar::parse("https://example.com/a.png").is_ok());
        assert!(Avatar::parse("http://example.com").is_ok());
        assert_eq!(Avatar::parse("javascript:alert(1)"), Err(AvatarError::NotAUrl));
        assert_eq!(Avatar::parse("https://"), Err(AvatarError::NotAUrl));
        assert_eq!(Avatar::parse("https://a b.com"), Err(AvatarError::NotAUrl));
    }

    #[test]
    fn default_avatar_is_the_servers_own_picture_of_the_user() {
        let id = UserId::generate();
        let avatar = Avatar::default_for(&id);
        assert_eq!(avatar.as_str(), format!("/api/v1/user/{id}/avatar"));
        assert_eq!(Avatar::stored(avatar.as_str()), Ok(avatar.clone()));
        assert_ne!(avatar, Avatar::default_for(&UserId::generate()));
    }

    #[test]
    fn a_user_gives_urls_and_only_stores_hold_the_servers_own_pictures() {
        let own = Avatar::default_for(&UserId::generate());
        assert_eq!(Avatar::parse(own.as_str()), Err(AvatarError::NotAUrl));
        assert_eq!(Avatar::stored("https://example.com/a.png"), Avatar::parse("https://example.com/a.png"));
        for raw in
            ["/api/v1/user/not-an-id/avatar", "/api/v1/user//avatar", "/avatar.png", "//evil.example/a"]
        {
            assert_eq!(Avatar::stored(raw), Err(AvatarError::NotAUrl), "{raw}");
        }
    }

    #[test]
    fn a_former_outside_default_is_shown_as_the_servers_own_and_a_chosen_url_as_it_is() {
        let id = UserId::generate();
        let former = Avatar::parse("https://avatar.iran.liara.run/public/girl?username=alice").unwrap();
        assert_eq!(former.shown_for(&id), Avatar::default_for(&id));
        let chosen = Avatar::parse("https://example.com/me.png").unwrap();
        assert_eq!(chosen.shown_for(&id), chosen);
    }

    proptest! {
        #[test]
        fn valid_usernames_are_accepted(raw in "[A-Za-z0-9_.-]{3,32}") {
            let name = Username::parse(&raw).unwrap();
            prop_assert_eq!(name.as_str(), raw.as_str());
        }

        #[test]
        fn username_parse_accepts_exactly_the_documented_language(raw in "\\PC{0,40}") {
            let expected = (3..=32).contains(&raw.chars().count())
                && raw.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            prop_assert_eq!(Username::parse(&raw).is_ok(), expected);
        }

        #[test]
        fn password_parse_accepts_exactly_8_to_72_bytes(raw in "\\PC{0,80}") {
            prop_assert_eq!(Password::parse(&raw).is_ok(), (8..=72).contains(&raw.len()));
        }

        #[test]
        fn full_name_parse_is_trimmed_and_bounded(raw in "\\PC{0,80}") {
            match FullName::parse(&raw) {
                Ok(name) => {
                    prop_assert_eq!(name.as_str(), raw.trim());
                    prop_assert!((1..=64).contains(&name.as_str().chars().count()));
                }
                // Only the length errors speak of the length; the visibility rules have
                // their own properties below.
                Err(FullNameError::Empty) => prop_assert_eq!(raw.trim().chars().count(), 0),
                Err(FullNameError::TooLong { .. }) => prop_assert!(raw.trim().chars().count() > 64),
                Err(FullNameError::ControlCharacter) => {
                    prop_assert!(raw.trim().chars().any(char::is_control))
                }
                Err(FullNameError::InvisibleCharacter | FullNameError::InvisibleStart) => {
                    let trimmed = raw.trim();
                    prop_assert!(
                        trimmed.chars().any(text::is_hidden)
                            || trimmed.chars().next().is_some_and(|c| !text::is_visible(c))
                    );
                }
            }
        }

        #[test]
        fn accepted_full_names_show_something_and_hide_nothing(raw in "\\PC{0,8}|[\u{200B}-\u{200F}\u{202A}-\u{202E}\u{2066}-\u{2069}\u{FE0F}a-z👩]{0,8}") {
            if let Ok(name) = FullName::parse(&raw) {
                prop_assert!(name.as_str().chars().next().is_some_and(text::is_visible));
                prop_assert!(!name.as_str().chars().any(|c| c.is_control() || text::is_hidden(c)));
            }
        }
    }
}
