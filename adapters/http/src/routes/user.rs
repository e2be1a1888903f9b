use actix_web::{web, HttpRequest, HttpResponse};
use application::accounts::{user_cursor, user_search};
use application::{AccountError, NewAccount};
use domain::{Avatar, FullName, Password, UserId, Username};

use super::required;
use crate::auth::{token_cookie, CurrentUser};
use crate::dto::{
    Envelope, LoggedInDto, LoginRequest, Null, RegisterRequest, RegisteredDto, UserDto, UsersQuery,
};
use crate::error::ApiError;
use crate::openapi::{
    Conflict, ForeignOrigin, NotFound, PayloadTooLarge, RateLimited, Unauthenticated, Unavailable,
    UnsupportedMediaType, Validation,
};
use crate::state::AppState;

/// Creates an account and logs it in.
#[utoipa::path(
    post,
    path = "/api/v1/user/register",
    tag = "user",
    operation_id = "register",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Registered and logged in; the `token` cookie is set",
            body = Envelope<RegisteredDto>,
            headers(("Set-Cookie" = String, description = "`token=<jwt>; HttpOnly; Path=/; SameSite=…; Max-Age=…`"))),
        (status = 400, response = Validation),
        (status = 409, response = Conflict),
        (status = 403, response = ForeignOrigin),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn register(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    state.limits.register(&req)?;
    let account = NewAccount::try_from(body.into_inner())?;
    let (user, token) = state.accounts.register(account).await?;
    Ok(HttpResponse::Created().cookie(token_cookie(&state.settings.cookie, &token.token, false)).json(
        Envelope::with_message(
            "user registered",
            RegisteredDto { new_user: UserDto::from(&user), token: token.token },
        ),
    ))
}

/// A registration as the sign-up form sends it, checked field by field in the form's
/// order: the required fields first, then whether the confirmation matches, then each
/// value's rules. An empty `gender` or a blank `avatar` is as good as none.
impl TryFrom<RegisterRequest> for NewAccount {
    type Error = ApiError;

    fn try_from(body: RegisterRequest) -> Result<Self, ApiError> {
        let full_name = required(&body.full_name, "fullName")?;
        let username = required(&body.username, "username")?;
        let password = required(&body.password, "password")?;
        if body.confirm_password.as_deref().is_some_and(|c| c != password) {
            return Err(ApiError::invalid_field("confirmPassword", "does not match password"));
        }
        Ok(Self {
            full_name: FullName::parse(full_name)?,
            username: Username::parse(username)?,
            password: Password::parse(password)?,
            gender: body.gender.as_deref().filter(|g| !g.is_empty()).map(str::parse).transpose()?,
            avatar: body
                .avatar
                .as_deref()
                .map(str::trim)
                .filter(|a| !a.is_empty())
                .map(Avatar::parse)
                .transpose()?,
        })
    }
}

/// Logs in with a username (any case) and password.
///
/// An unknown user and a wrong password get the same 401, so that accounts can't be probed.
#[utoipa::path(
    post,
    path = "/api/v1/user/login",
    tag = "user",
    operation_id = "login",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Logged in; the `token` cookie is set",
            body = Envelope<LoggedInDto>,
            headers(("Set-Cookie" = String, description = "`token=<jwt>; HttpOnly; Path=/; SameSite=…; Max-Age=…`"))),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = ForeignOrigin),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let username = required(&body.username, "username")?;
    let password = required(&body.password, "password")?;
    let attempt = state.limits.login(&req, username)?;
    let outcome = state.accounts.login(username, password).await;
    if matches!(outcome, Err(AccountError::InvalidCredentials)) {
        // Past the username's allowance of failures a wrong password is a 429, not a 401.
        attempt.failed()?;
    }
    let (user, token) = outcome?;
    Ok(HttpResponse::Ok().cookie(token_cookie(&state.settings.cookie, &token.token, false)).json(
        Envelope::with_message("logged in", LoggedInDto { user: UserDto::from(&user), token: token.token }),
    ))
}

/// Revokes the token (cookie or header alike) and clears the cookie.
#[utoipa::path(
    post,
    path = "/api/v1/user/logout",
    tag = "user",
    operation_id = "logout",
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "Logged out: the token is refused from now on",
            body = Envelope<Null>,
            headers(("Set-Cookie" = String, description = "`token=; Max-Age=0`: clears the cookie"))),
        (status = 401, response = Unauthenticated),
        (status = 403, response = ForeignOrigin),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn logout(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
) -> Result<HttpResponse, ApiError> {
    state.accounts.logout(&session).await?;
    Ok(HttpResponse::Ok()
        .cookie(token_cookie(&state.settings.cookie, "", true))
        .json(Envelope::with_message("logged out", Null)))
}

/// My own user.
#[utoipa::path(
    get,
    path = "/api/v1/user/get-profile",
    tag = "user",
    operation_id = "getProfile",
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The caller", body = Envelope<UserDto>),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn profile(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
) -> Result<HttpResponse, ApiError> {
    let user = state.accounts.profile(session.user_id()).await?;
    Ok(HttpResponse::Ok().json(Envelope::data(UserDto::from(&user))))
}

/// Everyone but me, by username. The next page's cursor, if any, is in `X-Next-Cursor`.
/// Searches (a non-blank `search`) are rate limited per user; plain listing is not.
#[utoipa::path(
    get,
    path = "/api/v1/user/get-other-users",
    tag = "user",
    operation_id = "getOtherUsers",
    params(UsersQuery),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "One page of users, ordered by lower-cased username",
            body = Envelope<Vec<UserDto>>,
            headers(("X-Next-Cursor" = String,
                description = "Present when more users may follow: the `cursor` of the next page"))),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn other_users(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    query: web::Query<UsersQuery>,
) -> Result<HttpResponse, ApiError> {
    if query.search.as_deref().is_some_and(|s| !s.trim().is_empty()) {
        state.limits.search(session.user_id().as_str())?;
    }
    let search = query.search.as_deref().map(user_search::parse).transpose()?.flatten();
    let after = query.cursor.as_deref().map(user_cursor::decode).transpose()?.flatten();
    let page = state.accounts.list_users(session.user_id(), search, query.limit, after.as_ref()).await?;
    let mut response = HttpResponse::Ok();
    if let Some(cursor) = &page.next_cursor {
        response.insert_header(("X-Next-Cursor", cursor.as_str()));
    }
    let users: Vec<UserDto> = page.users.iter().map(UserDto::from).collect();
    Ok(response.json(Envelope::data(users)))
}

/// Another user (or me) by id, as the user list shows them: how a client names someone it
/// has not listed yet (a sender, a member of a group).
#[utoipa::path(
    get,
    path = "/api/v1/user/{id}",
    tag = "user",
    operation_id = "getUser",
    params(("id" = String, Path, description = "The user's id: a UUID, lower-case and hyphenated \
        (anything else is 400)", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The user", body = Envelope<UserDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn user(
    state: web::Data<AppState>,
    _caller: CurrentUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = UserId::parse(&id).map_err(|e| ApiError::invalid_field("id", e))?;
    match state.accounts.profile(&id).await {
        Ok(user) => Ok(HttpResponse::Ok().json(Envelope::data(UserDto::from(&user)))),
        // The caller's token was checked above: here it means that nobody has this id.
        Err(AccountError::Unauthenticated) => Err(ApiError::not_found("user not found")),
        Err(e) => Err(e.into()),
    }
}

/// How many ids one `GET /api/v1/user/online` may ask about.
pub const ONLINE_IDS_MAX: usize = 200;

#[derive(serde::Deserialize)]
pub struct OnlineQuery {
    /// Comma-separated user ids, 1 to [`ONLINE_IDS_MAX`].
    pub ids: Option<String>,
}

/// The ids of an online query, each checked: 1 to [`ONLINE_IDS_MAX`], every one a user id.
fn online_ids(ids: Option<&str>) -> Result<Vec<UserId>, ApiError> {
    let ids = ids
        .map(str::trim)
        .filter(|ids| !ids.is_empty())
        .ok_or_else(|| ApiError::invalid_field("ids", "is required: comma-separated user ids"))?;
    let ids: Vec<&str> = ids.split(',').map(str::trim).collect();
    if ids.len() > ONLINE_IDS_MAX {
        return Err(ApiError::invalid_field("ids", format!("must name at most {ONLINE_IDS_MAX} users")));
    }
    ids.into_iter().map(|id| UserId::parse(id).map_err(|e| ApiError::invalid_field("ids", e))).collect()
}

/// Which of the given users are online: how a client learns the presence of users it shares
/// no conversation with (in the scoped presence mode it gets its partners' changes only).
#[utoipa::path(
    get,
    path = "/api/v1/user/online",
    tag = "user",
    operation_id = "onlineUsers",
    params(("ids" = String, Query, description = "Comma-separated user ids (UUIDs, lower-case and \
        hyphenated), 1 to 200; an id asked twice is answered once. Missing, empty, malformed or \
        more than 200: 400", pattern = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(,[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}){0,199}$")),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The ids asked about that are online, in the order asked",
            body = Envelope<Vec<String>>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn online(
    state: web::Data<AppState>,
    _caller: CurrentUser,
    query: web::Query<OnlineQuery>,
) -> Result<HttpResponse, ApiError> {
    let ids = online_ids(query.ids.as_deref())?;
    let online = state.realtime.online_among(&ids).await.map_err(application::ApplicationError::from)?;
    let online: Vec<&str> = online.iter().map(UserId::as_str).collect();
    Ok(HttpResponse::Ok().json(Envelope::data(online)))
}

#[cfg(test)]
mod tests {
    use domain::Gender;

    use super::*;

    #[test]
    fn online_ids_are_one_to_two_hundred_user_ids() {
        let ids: Vec<String> = (0..201).map(|_| UserId::generate().to_string()).collect();
        assert_eq!(online_ids(Some(&ids[..200].join(","))).unwrap().len(), 200);
        assert_eq!(online_ids(Some(&format!(" {} , {} ", ids[0], ids[1]))).unwrap().len(), 2);
        for bad in [None, Some(""), Some(" "), Some("nope"), Some(&*format!("{},", ids[0]))] {
            assert_eq!(online_ids(bad).unwrap_err().code(), "VALIDATION", "{bad:?}");
        }
        let too_many = online_ids(Some(&ids.join(","))).unwrap_err();
        assert!(too_many.to_string().contains("at most 200"), "{too_many}");
    }

    fn form() -> RegisterRequest {
        RegisterRequest {
            full_name: Some("  Alice Liddell ".into()),
            username: Some("Alice".into()),
            password: Some("correct horse".into()),
            confirm_password: Some("correct horse".into()),
            gender: Some("female".into()),
            avatar: Some(" https://example.com/me.png ".into()),
        }
    }

    /// The refusal as `CODE message`; the message starts with the field.
    fn refusal(form: RegisterRequest) -> String {
        NewAccount::try_from(form).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_form_becomes_a_new_account_of_parsed_values() {
        let account = NewAccount::try_from(form()).unwrap();
        assert_eq!(account.full_name.as_str(), "Alice Liddell");
        assert_eq!(account.username.as_str(), "Alice");
        assert_eq!(account.password.expose(), "correct horse");
        assert_eq!(account.gender, Some(Gender::Female));
        assert_eq!(
            account.avatar.map(|a| a.as_str().to_owned()).as_deref(),
            Some("https://example.com/me.png")
        );
    }

    #[test]
    fn an_empty_gender_and_a_blank_avatar_are_left_to_the_defaults() {
        let account = NewAccount::try_from(RegisterRequest {
            gender: Some(String::new()),
            avatar: Some("  ".into()),
            ..form()
        })
        .unwrap();
        assert_eq!((account.gender, account.avatar.is_none()), (None, true));
    }

    #[test]
    fn each_invalid_value_is_refused_naming_its_field() {
        let cases = [
            (RegisterRequest { full_name: Some(" ".into()), ..form() }, "fullName"),
            (RegisterRequest { username: Some("a b".into()), ..form() }, "username"),
            (
                RegisterRequest { password: Some("short".into()), confirm_password: None, ..form() },
                "password",
            ),
            (RegisterRequest { gender: Some("robot".into()), ..form() }, "gender"),
            (RegisterRequest { avatar: Some("ftp://x".into()), ..form() }, "avatar"),
            (RegisterRequest { confirm_password: Some("other".into()), ..form() }, "confirmPassword"),
        ];
        for (form, field) in cases {
            assert!(refusal(form).starts_with(&format!("VALIDATION {field} ")), "{field}");
        }
    }

    #[test]
    fn missing_fields_are_reported_before_any_rule() {
        let no_password = RegisterRequest { full_name: Some(" ".into()), password: None, ..form() };
        assert_eq!(refusal(no_password), "VALIDATION password is required");
        let mismatch =
            RegisterRequest { username: Some("a b".into()), confirm_password: Some("x".into()), ..form() };
        assert_eq!(refusal(mismatch), "VALIDATION confirmPassword does not match password");
    }
}
