//! Values the unit tests of several use cases build alike.

use domain::{Avatar, FullName, PasswordHash, Timestamp, User, UserId, Username};

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
