//! The ports: what the use cases need from storage, crypto, time and delivery.
//!
//! Every port is object safe, `Send + Sync`, and held as `Arc<dyn Port>` by the services.

use async_trait::async_trait;
use domain::{
    Conversation, ConversationId, Message, MessageId, ParticipantPair, Password, PasswordHash,
    Timestamp, User, UserId, Username,
};

/// What a repository call can end in besides success.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    /// A uniqueness rule was hit (a taken username, an existing id).
    #[error("the record conflicts with an existing one")]
    Conflict,
    /// The store could not be reached or did not answer in time; retrying later may work.
    #[error("storage is unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else: a bug or corrupt data.
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type RepoResult<T> = Result<T, RepoError>;

/// Which users a listing returns: everyone but `exclude`, ordered by lower-cased username.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserQuery {
    pub exclude: UserId,
    /// Case-insensitive substring of the username or full name; matched literally.
    pub search: Option<String>,
    /// Only users whose lower-cased username sorts after this one.
    pub after_username: Option<String>,
    pub limit: u32,
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait UserRepository: Send + Sync {
    /// Stores a new user. Returns `Conflict` if the username is taken, compared
    /// case-insensitively (also when two inserts race), or if the id exists.
    async fn insert(&self, user: &User) -> RepoResult<()>;

    async fn find_by_id(&self, id: &UserId) -> RepoResult<Option<User>>;

    /// Looks a user up by username, case-insensitively.
    async fn find_by_username(&self, username: &Username) -> RepoResult<Option<User>>;

    /// One page of users, see [`UserQuery`].
    async fn list(&self, query: &UserQuery) -> RepoResult<Vec<User>>;
}

/// A conversation with its most recent message, for the conversation list.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSummary {
    pub conversation: Conversation,
    pub last_message: Option<Message>,
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait ConversationRepository: Send + Sync {
    /// Returns the pair's conversation, storing `candidate` first if the pair has none.
    /// Exactly one conversation per pair ever exists, also when both users race to create it:
    /// the loser gets the winner's conversation back.
    async fn find_or_insert(&self, candidate: &Conversation) -> RepoResult<Conversation>;

    async fn find_by_participants(&self, pair: &ParticipantPair) -> RepoResult<Option<Conversation>>;

    /// Moves the conversation's `updated_at` forward to `at` (never backwards).
    async fn touch(&self, id: &ConversationId, at: Timestamp) -> RepoResult<()>;

    /// The user's conversations with their last message, most recently updated first.
    async fn list_for_user(&self, user: &UserId) -> RepoResult<Vec<ConversationSummary>>;
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait MessageRepository: Send + Sync {
    /// Stores a message durably: when this returns `Ok`, the message survives a crash.
    /// Returns `Conflict` if the id exists.
    async fn insert(&self, message: &Message) -> RepoResult<()>;

    /// The newest `limit` messages of the conversation with an id below `before` (all when
    /// `None`), returned oldest first.
    async fn list_by_conversation(
        &self,
        conversation: &ConversationId,
        before: Option<MessageId>,
        limit: u32,
    ) -> RepoResult<Vec<Message>>;
}

/// Revoked tokens, by their unique id (`jti`), kept until the token would have expired anyway.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait RevokedTokenRepository: Send + Sync {
    /// Records the revocation; revoking twice is not an error.
    async fn revoke(&self, token_id: &str, expires_at: Timestamp) -> RepoResult<()>;

    async fn is_revoked(&self, token_id: &str) -> RepoResult<bool>;

    /// Forgets revocations of tokens that expired before `now`; returns how many.
    async fn purge_expired(&self, now: Timestamp) -> RepoResult<u64>;
}

/// Whether the store answers, for readiness probes.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait HealthCheck: Send + Sync {
    /// `Ok` when a round trip to the dependency succeeded.
    async fn ping(&self) -> RepoResult<()>;
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed")]
pub struct HashError(#[source] pub anyhow::Error);

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait PasswordHasher: Send + Sync {
    /// Hashes without blocking the caller's async worker.
    async fn hash(&self, password: &Password) -> Result<PasswordHash, HashError>;

    /// `Ok(false)` for a wrong password; `Err` only when the hash itself is unusable.
    async fn verify(&self, password: &Password, hash: &PasswordHash) -> Result<bool, HashError>;
}

/// A signed token as handed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    pub claims: TokenClaims,
}

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    pub user_id: UserId,
    /// Unique per token, the handle for revocation.
    pub token_id: String,
    pub expires_at: Timestamp,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, badly signed, of another algorithm, or expired.
    #[error("the token is invalid or expired")]
    Invalid,
    #[error("the token could not be issued")]
    Issue,
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait TokenService: Send + Sync {
    fn issue(&self, user: &UserId, now: Timestamp) -> Result<IssuedToken, TokenError>;

    /// Checks signature, algorithm and expiry; revocation is the caller's business.
    fn verify(&self, token: &str, now: Timestamp) -> Result<TokenClaims, TokenError>;
}

#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock, to the millisecond: the precision every store keeps and the API shows,
/// so a value read back equals the value written, on any backend.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        use chrono::SubsecRound as _;
        chrono::Utc::now().trunc_subsecs(3)
    }
}

/// A real-time event for users' open connections.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    NewMessage(Message),
    OnlineUsers(Vec<UserId>),
    Typing { from: UserId, to: UserId, is_typing: bool },
}

#[derive(Debug, thiserror::Error)]
#[error("the event could not be published")]
pub struct NotifyError(#[source] pub anyhow::Error);

/// Delivers events to users' connections, wherever they are (this instance or another one).
/// Delivery is best effort: a stored message is never un-stored because delivery failed,
/// and clients catch up through the history.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync {
    /// To every connection of each of `users`.
    async fn notify(&self, users: &[UserId], event: &Event) -> Result<(), NotifyError>;

    /// To every connection of every user.
    async fn broadcast(&self, event: &Event) -> Result<(), NotifyError>;
}

/// Who is online: a user is online while at least one of their connections is open.
#[cfg_attr(any(test, feature = "mocks"), mockall::automock)]
#[async_trait]
pub trait Presence: Send + Sync {
    /// Counts a new connection; returns `true` if the user just came online.
    async fn connected(&self, user: &UserId) -> RepoResult<bool>;

    /// Counts a closed connection; returns `true` if the user just went offline.
    async fn disconnected(&self, user: &UserId) -> RepoResult<bool>;

    /// Every online user, in no particular order.
    async fn online(&self) -> RepoResult<Vec<UserId>>;
}
