//! Accounts: register, log in and out, authenticate a token, read profiles, list users.

use std::sync::{Arc, OnceLock};

use domain::{Avatar, FullName, Gender, Password, PasswordHash, User, UserId, Username};

use crate::error::{embeds_application_error, ApplicationError};
use crate::known_users::KnownUsers;
use crate::paging;
use crate::ports::{
    Clock, HashError, IssuedToken, PasswordHasher, RepoError, Revocation, SearchPrefix, TokenClaims,
    TokenError, TokenService, UserQuery, UserRepository,
};
use crate::revocations::Revocations;

/// How long a socket's handshake waits for the store to say whether its user exists (see
/// [`AccountService::authenticate_connection`]).
pub const CONNECTION_LOOKUP_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);

/// What a caller of the account use cases can act on.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("username is already taken")]
    UsernameTaken,
    /// One answer for an unknown user and a wrong password, so accounts can't be probed.
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("authentication required")]
    Unauthenticated,
    #[error(transparent)]
    Failed(#[from] ApplicationError),
}

embeds_application_error!(AccountError: RepoError, HashError);

/// A registration, its fields already valid: the adapter that received it parsed them.
#[derive(Debug, Clone)]
pub struct NewAccount {
    pub full_name: FullName,
    pub username: Username,
    pub password: Password,
    pub gender: Option<Gender>,
    /// `None`: a default picture made from the username and gender.
    pub avatar: Option<Avatar>,
}

/// A verified, unrevoked token and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    pub claims: TokenClaims,
}

impl Authenticated {
    pub fn user_id(&self) -> &UserId {
        &self.claims.user_id
    }
}

/// A page of the user list.
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<User>,
    /// Pass as `cursor` for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

pub struct AccountService {
    users: Arc<dyn UserRepository>,
    /// Whose tokens are still good: a token signed for a user that no longer exists (a
    /// database reset or restore under the same secret) is no token.
    known: KnownUsers,
    revocations: Arc<Revocations>,
    hasher: Arc<dyn PasswordHasher>,
    tokens: Arc<dyn TokenService>,
    clock: Arc<dyn Clock>,
    /// A real hash to verify against when the user is unknown, so that a login for an
    /// unknown name costs as much time as one with a wrong password.
    decoy_hash: OnceLock<PasswordHash>,
}

impl AccountService {
    pub fn new(
        users: Arc<dyn UserRepository>,
        revocations: Arc<Revocations>,
        hasher: Arc<dyn PasswordHasher>,
        tokens: Arc<dyn TokenService>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let known = KnownUsers::new(users.clone());
        Self { users, known, revocations, hasher, tokens, clock, decoy_hash: OnceLock::new() }
    }

    pub async fn register(&self, input: NewAccount) -> Result<(User, IssuedToken), AccountError> {
        let NewAccount { full_name, username, password, gender, avatar } = input;
        let id = UserId::generate();
        let avatar = avatar.unwrap_or_else(|| Avatar::default_for(&id));

        // Fail fast on a taken name before paying for a hash; the unique index still
        // decides races below.
        if self.users.find_by_username(&username).await?.is_some() {
            return Err(AccountError::UsernameTaken);
        }
        let password_hash = self.hasher.hash(&password).await?;
        let now = self.clock.now();
        let user =
            User { id, full_name, username, gender, avatar, password_hash, created_at: now, updated_at: now };
        match self.users.insert(&user).await {
            Ok(()) => {}
            Err(RepoError::Conflict) => return Err(AccountError::UsernameTaken),
            Err(e) => return Err(e.into()),
        }
        let token = self.issue(&user.id)?;
        Ok((user, token))
    }

    /// Takes the username and password as typed: any text may be a credential, and a name
    /// no account could have is answered like an unknown one, after the same time, so the
    /// edge has nothing to parse here.
    pub async fn login(&self, username: &str, password: &str) -> Result<(User, IssuedToken), AccountError> {
        let password = Password::for_login(password).map_err(|_| AccountError::InvalidCredentials)?;
        let user = match Username::parse(username) {
            Ok(name) => self.users.find_by_username(&name).await?,
            Err(_) => None,
        };
        let Some(user) = user else {
            let decoy = self.decoy_hash().await?;
            // The outcome is known; the verification only spends the same time.
            let _ = self.hasher.verify(&password, &decoy).await;
            return Err(AccountError::InvalidCredentials);
        };
        match self.hasher.verify(&password, &user.password_hash).await {
            Ok(true) => {}
            Ok(false) => return Err(AccountError::InvalidCredentials),
            // A stored hash the hasher can't use (imported or edited in the store) matches
            // no password: the account can't log in, and the client learns no more than 401.
            Err(error) => {
                tracing::error!(user_id = %user.id, error = format!("{error:#}"), "stored password hash is unusable");
                return Err(AccountError::InvalidCredentials);
            }
        }
        let token = self.issue(&user.id)?;
        Ok((user, token))
    }

    /// Revokes the token for good, on every instance sharing the store.
    pub async fn logout(&self, session: &Authenticated) -> Result<(), AccountError> {
        self.revocations
            .revoke(Revocation {
                token_id: session.claims.token_id.clone(),
                expires_at: session.claims.expires_at,
            })
            .await?;
        Ok(())
    }

    /// Accepts a token that is well signed, unexpired, not revoked and names a user that
    /// exists (answered from memory once the user was seen).
    pub async fn authenticate(&self, token: &str) -> Result<Authenticated, AccountError> {
        let claims = self.unrevoked(token).await?;
        if !self.known.exists(&claims.user_id).await? {
            return Err(AccountError::Unauthenticated);
        }
        Ok(Authenticated { claims })
    }

    /// As [`authenticate`](Self::authenticate), for the handshake of a socket, which does not
    /// wait on a store that cannot answer: when whether the token's user exists cannot be read
    /// within [`CONNECTION_LOOKUP_DEADLINE`], the token's signature vouches for them (tokens
    /// are issued to registered users only, and users are never deleted). A revoked token is
    /// refused all the same, and a user the store says does not exist.
    pub async fn authenticate_connection(&self, token: &str) -> Result<Authenticated, AccountError> {
        let claims = self.unrevoked(token).await?;
        match tokio::time::timeout(CONNECTION_LOOKUP_DEADLINE, self.known.exists(&claims.user_id)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return Err(AccountError::Unauthenticated),
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "a socket's user taken on the token's word: the store cannot say");
            }
            Err(_) => {
                tracing::debug!("a socket's user taken on the token's word: the store did not answer in time")
            }
        }
        Ok(Authenticated { claims })
    }

    /// The claims of a token that is well signed, unexpired and not revoked.
    async fn unrevoked(&self, token: &str) -> Result<TokenClaims, AccountError> {
        let claims =
            self.tokens.verify(token, self.clock.now()).map_err(|_| AccountError::Unauthenticated)?;
        if self.revocations.is_revoked(&claims.token_id).await? {
            return Err(AccountError::Unauthenticated);
        }
        Ok(claims)
    }

    pub async fn profile(&self, user: &UserId) -> Result<User, AccountError> {
        // A valid token of a user that no longer exists is as good as no token.
        self.users.find_by_id(user).await?.ok_or(AccountError::Unauthenticated)
    }

    /// Everyone but `me`, by username, `limit` at a time after the username `after` (a
    /// decoded [`user_cursor`]); with `search`, only those whose username, full name or a
    /// word of it starts with it (ignoring case; see [`user_search`]).
    pub async fn list_users(
        &self,
        me: &UserId,
        search: Option<SearchPrefix>,
        limit: Option<u32>,
        after: Option<&Username>,
    ) -> Result<UserPage, AccountError> {
        let limit = paging::clamp(limit);
        let query =
            UserQuery { exclude: me.clone(), search, after_username: after.map(Username::normalized), limit };
        let users = self.users.list(&query).await?;
        let next_cursor = (users.len() == limit as usize)
            .then(|| users.last().map(|u| user_cursor::encode(&u.username)))
            .flatten();
        Ok(UserPage { users, next_cursor })
    }

    fn issue(&self, user: &UserId) -> Result<IssuedToken, AccountError> {
        self.tokens.issue(user, self.clock.now()).map_err(|e: TokenError| {
            ApplicationError::Unexpected(anyhow::Error::new(e).context("issuing a token")).into()
        })
    }

    async fn decoy_hash(&self) -> Result<PasswordHash, AccountError> {
        if let Some(hash) = self.decoy_hash.get() {
            return Ok(hash.clone());
        }
        let decoy = Password::parse("decoy-password-never-matches")
            .expect("the decoy literal satisfies the password rules");
        let hash = self.hasher.hash(&decoy).await?;
        Ok(self.decoy_hash.get_or_init(|| hash).clone())
    }
}

/// The search of the user list: a prefix rather than any substring, so that every store
/// answers from an index.
pub mod user_search {
    use crate::ports::SearchPrefix;

    /// Longest search, in characters.
    pub const MAX_CHARS: usize = 64;

    /// Why a search text is refused.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    pub enum SearchError {
        #[error("must not contain NUL characters")]
        Nul,
        #[error("must be at most {max} characters")]
        TooLong { max: usize },
    }

    /// The prefix to search for, `None` for blank text (list everyone); white space around
    /// it does not count.
    pub fn parse(raw: &str) -> Result<Option<SearchPrefix>, SearchError> {
        let text = raw.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text.contains('\0') {
            return Err(SearchError::Nul);
        }
        if text.chars().count() > MAX_CHARS {
            return Err(SearchError::TooLong { max: MAX_CHARS });
        }
        Ok(Some(SearchPrefix::new(text)))
    }
}

/// The cursor of the user list (`X-Next-Cursor`, then `cursor`): the lower-cased username
/// of the last user of a page. Users are listed by lower-cased username, so the cursor says
/// exactly where the next page starts, stays valid while users come and go, and sorts like
/// the list. It is a username, so anything else is refused before storage sees it.
pub mod user_cursor {
    use domain::Username;

    use crate::paging::InvalidCursor;

    /// The cursor that continues the list after `last`.
    pub fn encode(last: &Username) -> String {
        last.normalized()
    }

    /// The username to list after, `None` for the first page (an empty cursor).
    pub fn decode(raw: &str) -> Result<Option<Username>, InvalidCursor> {
        if raw.is_empty() {
            return Ok(None);
        }
        Username::parse(raw).map(Some).map_err(|_| InvalidCursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paging::InvalidCursor;
    use crate::ports::{
        MockClock, MockPasswordHasher, MockRevokedTokenRepository, MockTokenService, MockUserRepository,
    };
    use chrono::{TimeZone, Utc};
    use mockall::predicate::*;

    fn now() -> domain::Timestamp {
        Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
    }

    struct Mocks {
        users: MockUserRepository,
        revoked: MockRevokedTokenRepository,
        hasher: MockPasswordHasher,
        tokens: MockTokenService,
    }

    impl Mocks {
        fn new() -> Self {
            Self {
                users: MockUserRepository::new(),
                revoked: MockRevokedTokenRepository::new(),
                hasher: MockPasswordHasher::new(),
                tokens: MockTokenService::new(),
            }
        }

        fn service(self) -> AccountService {
            let mut clock = MockClock::new();
            clock.expect_now().returning(now);
            AccountService::new(
                Arc::new(self.users),
                Revocations::new(Arc::new(self.revoked), None),
                Arc::new(self.hasher),
                Arc::new(self.tokens),
                Arc::new(clock),
            )
        }
    }

    fn claims_for(user: &UserId) -> TokenClaims {
        TokenClaims { user_id: user.clone(), token_id: "jti-1".into(), expires_at: now() }
    }

    fn issued(user: &UserId) -> IssuedToken {
        IssuedToken { token: "signed.jwt.token".into(), claims: claims_for(user) }
    }

    fn user(name: &str) -> User {
        let username = Username::parse(name).unwrap();
        let id = UserId::generate();
        User {
            avatar: Avatar::default_for(&id),
            id,
            full_name: FullName::parse("Some One").unwrap(),
            username,
            gender: None,
            password_hash: PasswordHash::new("stored-hash".into()),
            created_at: now(),
            updated_at: now(),
        }
    }

    fn registration() -> NewAccount {
        NewAccount {
            full_name: FullName::parse("  Alice Liddell ").unwrap(),
            username: Username::parse("Alice").unwrap(),
            password: Password::parse("correct horse").unwrap(),
            gender: Some(Gender::Female),
            avatar: None,
        }
    }

    #[tokio::test]
    async fn register_stores_a_hashed_user_and_issues_a_token() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Ok(None));
        m.hasher
            .expect_hash()
            .withf(|p| p.expose() == "correct horse")
            .times(1)
            .returning(|_| Ok(PasswordHash::new("hashed".into())));
        m.users
            .expect_insert()
            .withf(|u| {
                u.username.as_str() == "Alice"
                    && u.full_name.as_str() == "Alice Liddell"
                    && u.password_hash.as_str() == "hashed"
                    && u.gender == Some(Gender::Female)
                    && u.avatar == Avatar::default_for(&u.id)
                    && u.created_at == now()
            })
            .times(1)
            .returning(|_| Ok(()));
        m.tokens.expect_issue().times(1).returning(|id, _| Ok(issued(id)));

        let (user, token) = m.service().register(registration()).await.unwrap();
        assert_eq!(token.claims.user_id, user.id);
    }

    #[tokio::test]
    async fn register_keeps_a_given_avatar() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Ok(None));
        m.hasher.expect_hash().returning(|_| Ok(PasswordHash::new("h".into())));
        m.users
            .expect_insert()
            .withf(|u| u.avatar.as_str() == "https://example.com/me.png")
            .returning(|_| Ok(()));
        m.tokens.expect_issue().returning(|id, _| Ok(issued(id)));
        let avatar = Avatar::parse("https://example.com/me.png").unwrap();
        let input = NewAccount { avatar: Some(avatar), ..registration() };
        assert!(m.service().register(input).await.is_ok());
    }

    #[tokio::test]
    async fn register_with_a_taken_name_does_not_hash() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Ok(Some(user("alice"))));
        let err = m.service().register(registration()).await.unwrap_err();
        assert!(matches!(err, AccountError::UsernameTaken));
    }

    #[tokio::test]
    async fn register_losing_an_insert_race_reports_the_name_taken() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Ok(None));
        m.hasher.expect_hash().returning(|_| Ok(PasswordHash::new("h".into())));
        m.users.expect_insert().returning(|_| Err(RepoError::Conflict));
        m.tokens.expect_issue().never();
        let err = m.service().register(registration()).await.unwrap_err();
        assert!(matches!(err, AccountError::UsernameTaken));
    }

    #[tokio::test]
    async fn register_reports_storage_outage_as_unavailable() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
        let err = m.service().register(registration()).await.unwrap_err();
        assert!(matches!(err, AccountError::Failed(ApplicationError::Unavailable(_))));
    }

    #[tokio::test]
    async fn login_with_the_right_password_issues_a_token() {
        let mut m = Mocks::new();
        let stored = user("alice");
        let id = stored.id.clone();
        m.users
            .expect_find_by_username()
            .withf(|name| name.as_str() == "ALICE")
            .returning(move |_| Ok(Some(stored.clone())));
        m.hasher
            .expect_verify()
            .withf(|p, h| p.expose() == "pw-123456" && h.as_str() == "stored-hash")
            .returning(|_, _| Ok(true));
        m.tokens.expect_issue().times(1).returning(|id, _| Ok(issued(id)));
        let (user, token) = m.service().login("ALICE", "pw-123456").await.unwrap();
        assert_eq!(user.id, id);
        assert_eq!(token.claims.user_id, id);
    }

    #[tokio::test]
    async fn login_with_a_wrong_password_is_refused() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Ok(Some(user("alice"))));
        m.hasher.expect_verify().returning(|_, _| Ok(false));
        m.tokens.expect_issue().never();
        let err = m.service().login("alice", "wrong-password").await.unwrap_err();
        assert!(matches!(err, AccountError::InvalidCredentials));
    }

    #[tokio::test]
    async fn login_against_an_unusable_stored_hash_is_refused_like_a_wrong_password() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Ok(Some(user("alice"))));
        m.hasher.expect_verify().returning(|_, _| Err(HashError(anyhow::anyhow!("invalid hash"))));
        m.tokens.expect_issue().never();
        let err = m.service().login("alice", "whatever-password").await.unwrap_err();
        assert!(matches!(err, AccountError::InvalidCredentials), "{err:?}");
    }

    #[tokio::test]
    async fn login_of_an_unknown_user_still_spends_a_verification() {
        let mut m = Mocks::new();
        m.users.expect_find_by_username().returning(|_| Ok(None));
        m.hasher.expect_hash().times(1).returning(|_| Ok(PasswordHash::new("decoy".into())));
        m.hasher.expect_verify().withf(|_, h| h.as_str() == "decoy").times(2).returning(|_, _| Ok(true));
        m.tokens.expect_issue().never();
        let service = m.service();
        for _ in 0..2 {
            let err = service.login("nobody", "whatever-pw").await.unwrap_err();
            assert!(matches!(err, AccountError::InvalidCredentials));
        }
    }

    #[tokio::test]
    async fn login_with_an_impossible_username_answers_like_an_unknown_one() {
        let mut m = Mocks::new();
        m.hasher.expect_hash().returning(|_| Ok(PasswordHash::new("decoy".into())));
        m.hasher.expect_verify().times(1).returning(|_, _| Ok(false));
        let err = m.service().login("$gt", "whatever-pw").await.unwrap_err();
        assert!(matches!(err, AccountError::InvalidCredentials));
    }

    #[tokio::test]
    async fn logout_revokes_the_token_until_it_expires() {
        let mut m = Mocks::new();
        let id = UserId::generate();
        m.revoked.expect_revoke().with(eq("jti-1"), eq(now())).times(1).returning(|_, _| Ok(()));
        let session = Authenticated { claims: claims_for(&id) };
        m.service().logout(&session).await.unwrap();
    }

    #[tokio::test]
    async fn authenticate_accepts_a_valid_unrevoked_token() {
        let mut m = Mocks::new();
        let id = UserId::generate();
        let claims = claims_for(&id);
        m.tokens.expect_verify().with(eq("tok"), eq(now())).returning(move |_, _| Ok(claims.clone()));
        m.revoked.expect_is_revoked().with(eq("jti-1")).returning(|_| Ok(false));
        let found = id.clone();
        m.users
            .expect_find_by_id()
            .withf(move |asked| *asked == found)
            .times(1)
            .returning(|id| Ok(Some(crate::fixtures::user_with_id(id, now()))));
        let service = m.service();
        let session = service.authenticate("tok").await.unwrap();
        assert_eq!(session.user_id(), &id);
        // The user is remembered: the second request costs no lookup (times(1) above).
        service.authenticate("tok").await.unwrap();
    }

    #[tokio::test]
    async fn authenticate_refuses_the_token_of_a_user_that_does_not_exist() {
        let mut m = Mocks::new();
        let claims = claims_for(&UserId::generate());
        m.tokens.expect_verify().returning(move |_, _| Ok(claims.clone()));
        m.revoked.expect_is_revoked().returning(|_| Ok(false));
        m.users.expect_find_by_id().returning(|_| Ok(None));
        let err = m.service().authenticate("tok").await.unwrap_err();
        assert!(matches!(err, AccountError::Unauthenticated));
    }

    #[tokio::test]
    async fn authenticate_refuses_a_revoked_token() {
        let mut m = Mocks::new();
        let id = UserId::generate();
        let claims = claims_for(&id);
        m.tokens.expect_verify().returning(move |_, _| Ok(claims.clone()));
        m.revoked.expect_is_revoked().returning(|_| Ok(true));
        let err = m.service().authenticate("tok").await.unwrap_err();
        assert!(matches!(err, AccountError::Unauthenticated));
    }

    #[tokio::test]
    async fn authenticate_refuses_an_invalid_token_without_a_lookup() {
        let mut m = Mocks::new();
        m.tokens.expect_verify().returning(|_, _| Err(TokenError::Invalid));
        m.revoked.expect_is_revoked().never();
        let err = m.service().authenticate("garbage").await.unwrap_err();
        assert!(matches!(err, AccountError::Unauthenticated));
    }

    #[tokio::test]
    async fn a_socket_is_not_kept_waiting_by_a_store_that_cannot_say_whether_its_user_exists() {
        let claims = claims_for(&UserId::generate());
        let service = |users: MockUserRepository, revoked: bool| {
            let mut m = Mocks::new();
            let claims = claims.clone();
            m.tokens.expect_verify().returning(move |_, _| Ok(claims.clone()));
            m.revoked.expect_is_revoked().returning(move |_| Ok(revoked));
            m.users = users;
            m.service()
        };
        let unavailable = || {
            let mut users = MockUserRepository::new();
            users.expect_find_by_id().returning(|_| Err(RepoError::Unavailable(anyhow::anyhow!("down"))));
            users
        };

        // The store cannot answer: the token's word is taken for a socket, not for a request.
        let accepted = service(unavailable(), false).authenticate_connection("tok").await.unwrap();
        assert_eq!(accepted.user_id(), &claims.user_id);
        let refused = service(unavailable(), false).authenticate("tok").await.unwrap_err();
        assert!(!matches!(refused, AccountError::Unauthenticated), "{refused:?}");

        // A revoked token, or a user the store says does not exist, is refused all the same.
        let refused = service(unavailable(), true).authenticate_connection("tok").await.unwrap_err();
        assert!(matches!(refused, AccountError::Unauthenticated));
        let mut missing = MockUserRepository::new();
        missing.expect_find_by_id().returning(|_| Ok(None));
        let refused = service(missing, false).authenticate_connection("tok").await.unwrap_err();
        assert!(matches!(refused, AccountError::Unauthenticated));
    }

    #[tokio::test]
    async fn profile_of_a_vanished_user_is_unauthenticated() {
        let mut m = Mocks::new();
        m.users.expect_find_by_id().returning(|_| Ok(None));
        let err = m.service().profile(&UserId::generate()).await.unwrap_err();
        assert!(matches!(err, AccountError::Unauthenticated));
    }

    #[tokio::test]
    async fn list_users_excludes_me_and_pages_by_username() {
        let mut m = Mocks::new();
        let me = UserId::generate();
        let expected_me = me.clone();
        m.users
            .expect_list()
            .withf(move |q| {
                q.exclude == expected_me
                    && q.search == Some(SearchPrefix::new("ali"))
                    && q.after_username.as_deref() == Some("bob")
                    && q.limit == 2
            })
            .returning(|_| Ok(vec![user("Carol"), user("Dave")]));
        let search = user_search::parse(" Ali ").unwrap();
        let after = Username::parse("Bob").unwrap();
        let page = m.service().list_users(&me, search, Some(2), Some(&after)).await.unwrap();
        assert_eq!(page.users.len(), 2);
        assert_eq!(page.next_cursor.as_deref(), Some("dave"));
    }

    #[tokio::test]
    async fn list_users_caps_the_limit_and_ends_without_a_cursor() {
        let mut m = Mocks::new();
        m.users
            .expect_list()
            .withf(|q| q.limit == paging::MAX_LIMIT && q.search.is_none())
            .returning(|_| Ok(vec![user("carol")]));
        let page = m.service().list_users(&UserId::generate(), None, Some(10_000), None).await.unwrap();
        assert_eq!(page.next_cursor, None);
    }

    #[test]
    fn a_search_is_a_trimmed_lower_cased_prefix_and_blank_is_none() {
        assert_eq!(user_search::parse(" Ali "), Ok(Some(SearchPrefix::new("ali"))));
        assert_eq!(user_search::parse(" \t "), Ok(None));
        assert_eq!(user_search::parse(""), Ok(None));
    }

    #[test]
    fn a_search_refuses_nul_and_more_than_its_length_in_characters() {
        assert_eq!(user_search::parse("a\0b"), Err(user_search::SearchError::Nul));
        let longest = "é".repeat(user_search::MAX_CHARS);
        assert!(user_search::parse(&format!(" {longest} ")).unwrap().is_some());
        assert_eq!(
            user_search::parse(&format!("{longest}e")),
            Err(user_search::SearchError::TooLong { max: user_search::MAX_CHARS })
        );
    }

    #[test]
    fn a_malformed_user_cursor_is_refused() {
        assert_eq!(user_cursor::decode("{$gt: ''}"), Err(InvalidCursor));
    }

    /// Properties of the user-list cursor, alone and through `list_users` over an in-memory
    /// store that lists like the real ones (by lower-cased username, after the cursor).
    mod cursor_properties {
        use super::*;
        use proptest::prelude::*;

        fn username() -> impl Strategy<Value = Username> {
            "[A-Za-z0-9_.-]{3,32}".prop_map(|raw| Username::parse(&raw).unwrap())
        }

        /// Anything a client could send: short, long, unicode, NUL, JSON, injection attempts.
        fn arbitrary_cursor() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<String>(),
                "[ -~]{0,40}",
                "[A-Za-z0-9_.-]{0,40}",
                Just("{$gt: ''}".to_owned()),
                Just("' OR 1=1 --".to_owned()),
                Just("\0abc".to_owned()),
            ]
        }

        fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
            tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(future)
        }

        /// A service whose store holds `names` (and me, whom it never lists).
        fn service_over(names: Vec<Username>) -> (AccountService, UserId) {
            let me = UserId::generate();
            let stored: Vec<User> = names.iter().map(|n| user(n.as_str())).collect();
            let mut m = Mocks::new();
            m.users.expect_list().returning(move |q| {
                let mut page: Vec<User> = stored
                    .iter()
                    .filter(|u| {
                        q.after_username.as_deref().is_none_or(|a| u.username.normalized().as_str() > a)
                    })
                    .cloned()
                    .collect();
                page.sort_by_key(|u| u.username.normalized());
                page.truncate(q.limit as usize);
                Ok(page)
            });
            (m.service(), me)
        }

        proptest! {
            #[test]
            fn a_cursor_decodes_to_where_it_was_made(name in username()) {
                let cursor = user_cursor::encode(&name);
                let decoded = user_cursor::decode(&cursor).unwrap().map(|after| after.normalized());
                prop_assert_eq!(decoded, Some(name.normalized()));
                // The cursor is itself a username: it survives a second trip unchanged.
                let again = Username::parse(&cursor).unwrap();
                prop_assert_eq!(user_cursor::encode(&again), cursor);
            }

            #[test]
            fn cursors_sort_like_the_list(a in username(), b in username()) {
                let (ca, cb) = (user_cursor::encode(&a), user_cursor::encode(&b));
                prop_assert_eq!(ca.cmp(&cb), a.normalized().cmp(&b.normalized()));
                // Names that differ only in case are one name, with one cursor.
                prop_assert_eq!(ca == cb, a.as_str().eq_ignore_ascii_case(b.as_str()));
            }

            #[test]
            fn decoding_never_panics_and_accepts_only_usernames(raw in arbitrary_cursor()) {
                match user_cursor::decode(&raw) {
                    Ok(None) => prop_assert!(raw.is_empty()),
                    Ok(Some(after)) => {
                        prop_assert!(Username::parse(&raw).is_ok());
                        prop_assert_eq!(after.normalized(), raw.to_ascii_lowercase());
                    }
                    Err(InvalidCursor) => prop_assert!(Username::parse(&raw).is_err()),
                }
            }

            #[test]
            fn following_the_cursors_lists_everyone_once_in_order(
                names in prop::collection::vec(username(), 0..40),
                limit in 1u32..8,
            ) {
                // One account per case-insensitive name, as registration guarantees.
                let mut unique: Vec<Username> = Vec::new();
                for name in names {
                    if !unique.iter().any(|u| u.normalized() == name.normalized()) {
                        unique.push(name);
                    }
                }
                let mut expected: Vec<String> = unique.iter().map(Username::normalized).collect();
                expected.sort();
                let (service, me) = service_over(unique);

                let mut seen = Vec::new();
                let mut cursor: Option<String> = None;
                for _ in 0..=expected.len() + 1 {
                    let after = cursor.as_deref().map(user_cursor::decode).transpose().unwrap().flatten();
                    let page = block_on(service.list_users(&me, None, Some(limit), after.as_ref())).unwrap();
                    prop_assert!(page.users.len() <= limit as usize);
                    seen.extend(page.users.iter().map(|u| u.username.normalized()));
                    match page.next_cursor {
                        Some(next) => {
                            // A next page is announced only after a full one, and starts after
                            // its last user.
                            prop_assert_eq!(page.users.len(), limit as usize);
                            prop_assert_eq!(Some(&next), seen.last());
                            cursor = Some(next);
                        }
                        None => break,
                    }
                }
                prop_assert_eq!(seen, expected);
            }
        }
    }
}
