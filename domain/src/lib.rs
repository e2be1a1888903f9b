//! The chat domain: entities (users, direct and group conversations, messages) and the validated value
//! types they are made of.
//!
//! Constructors validate, so a value that exists is a valid one. This crate does no IO and
//! knows no runtime, database or web framework: it must not import tokio, actix, sqlx,
//! mongodb or anything that talks to the outside world.

mod change;
mod group;
mod ids;
mod message;
mod reaction;
mod reply;
mod stream;
pub mod text;
mod user;

pub use change::{
    may_delete, Actor, Applied, Change, ChangeError, ChangeKind, Content, EditWindow, MessageChange,
    MessageState, Tombstone,
};
pub use group::{Group, GroupName, GroupNameError, Member, Role, RoleError, Seq, SystemEvent};
pub use ids::{ConversationId, IdError, MessageId, UserId};
pub use message::{
    Changed, Chat, Conversation, Message, MessageBody, MessageBodyError, PairError, ParticipantPair,
};
pub use reaction::{Emoji, EmojiError, ReactionError, ReactionView, Reactions};
pub use reply::{check_reply_target, excerpt, QuoteText, ReplyError, ReplyQuote};
pub use stream::{ClientMessageId, ClientMessageIdError, Cursor, CursorError, SyncCursor};
pub use user::{
    Avatar, AvatarError, FullName, FullNameError, Gender, GenderError, Password, PasswordError, PasswordHash,
    PasswordHashError, User, Username, UsernameError,
};

/// Instants are UTC everywhere in the domain.
pub type Timestamp = chrono::DateTime<chrono::Utc>;
