//! The error envelope: every failure leaves as
//! `{"success": false, "errMessage": …, "code": …}` with a fitting status, mapped here once.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use application::accounts::user_search::SearchError;
use application::paging::InvalidCursor;
use application::{AccountError, ApplicationError, GroupError, MessageChangeError, MessagingError};
use domain::{
    AvatarError, ChangeError, ClientMessageIdError, CursorError, FullNameError, GenderError, GroupNameError,
    MessageBodyError, PasswordError, UserId, UsernameError,
};
use serde::Serialize;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The request field at fault, for forms that show errors next to the field.
    field: Option<&'static str>,
    /// Seconds before a retry can succeed, sent as `Retry-After`.
    retry_after: Option<u64>,
    /// The users an error is about (unknown ones, ones listed twice, members already), for
    /// clients that mark them in a form; the message names them too.
    user_ids: Option<Vec<String>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    success: bool,
    err_message: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_ids: Option<&'a [String]>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, retry_after: None, user_ids: None }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "VALIDATION", message)
    }

    pub fn invalid_field(field: &'static str, message: impl std::fmt::Display) -> Self {
        Self { field: Some(field), ..Self::validation(format!("{field} {message}")) }
    }

    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "authentication required")
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }

    /// 404 naming users that don't exist (ids of no user, or text that is no id).
    pub fn unknown_users(ids: Vec<String>) -> Self {
        Self::not_found(format!("unknown users: {}", ids.join(", "))).about_users(ids)
    }

    /// The same error, naming `ids` in `userIds`.
    fn about_users(self, ids: Vec<String>) -> Self {
        Self { user_ids: Some(ids), ..self }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", message)
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            "the body must be JSON, sent as Content-Type: application/json",
        )
    }

    pub fn request_timeout() -> Self {
        Self::new(StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT", "the request body took too long to arrive")
    }

    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "method not allowed")
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            format!("request body is larger than {limit} bytes"),
        )
    }

    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            retry_after: Some(retry_after_secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!("too many requests, retry in {retry_after_secs} s"),
            )
        }
    }

    pub fn unavailable(cause: &anyhow::Error) -> Self {
        // An expected condition (a database or bus that is down or slow): one line with the
        // cause chain, without the backtrace `?` would add when RUST_BACKTRACE is set.
        tracing::warn!(error = format!("{cause:#}"), "dependency unavailable");
        Self {
            retry_after: Some(2),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the service is temporarily unavailable, try again shortly",
            )
        }
    }

    pub fn internal(cause: &anyhow::Error) -> Self {
        // The cause chain goes to the log, once; the client learns nothing of it.
        tracing::error!(error = ?cause, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "internal server error")
    }

    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.code, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(ErrorBody {
            success: false,
            err_message: &self.message,
            code: self.code,
            field: self.field,
            user_ids: self.user_ids.as_deref(),
        })
    }
}

/// The request field each parsing error is about, as clients see it in `field`: the one
/// place where field names of error bodies come from. A handler parses with `?` and the
/// error names its field; the message is the field and the domain's rule
/// (`"fullName must not be empty"`).
macro_rules! invalid_fields {
    ($($error:ty => $field:literal),+ $(,)?) => {
        $(
            impl From<$error> for ApiError {
                fn from(error: $error) -> Self {
                    Self::invalid_field($field, error)
                }
            }
        )+
    };
}

invalid_fields! {
    FullNameError => "fullName",
    UsernameError => "username",
    PasswordError => "password",
    GenderError => "gender",
    AvatarError => "avatar",
    MessageBodyError => "message",
    ClientMessageIdError => "clientMessageId",
    GroupNameError => "name",
    // Stream cursors arrive as `since` wherever a client resumes.
    CursorError => "since",
    // Page cursors of the user and conversation lists arrive as `cursor`.
    InvalidCursor => "cursor",
    SearchError => "search",
}

impl From<ApplicationError> for ApiError {
    fn from(error: ApplicationError) -> Self {
        match error {
            ApplicationError::Unavailable(cause) => Self::unavailable(&cause),
            ApplicationError::Unexpected(cause) => Self::internal(&cause),
        }
    }
}

impl From<AccountError> for ApiError {
    fn from(error: AccountError) -> Self {
        match error {
            AccountError::UsernameTaken => Self {
                field: Some("username"),
                ..Self::new(StatusCode::CONFLICT, "CONFLICT", "username is already taken")
            },
            AccountError::InvalidCredentials => {
                Self::new(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "invalid username or password")
            }
            AccountError::Unauthenticated => Self::unauthenticated(),
            AccountError::Failed(error) => error.into(),
        }
    }
}

impl From<MessagingError> for ApiError {
    fn from(error: MessagingError) -> Self {
        match error {
            MessagingError::UserNotFound => Self::not_found("user not found"),
            MessagingError::SelfConversation => Self::validation("you cannot send messages to yourself"),
            MessagingError::ClientIdReused => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED", error.to_string())
            }
            MessagingError::BeyondStream => {
                Self::invalid_field("since", "is beyond the end of your message stream; sync from the start")
            }
            MessagingError::InvalidCursor => Self::invalid_field("since", "is not a valid cursor"),
            MessagingError::ConversationNotFound | MessagingError::MessageNotFound => {
                Self::not_found(error.to_string())
            }
            MessagingError::NoLongerMember => Self::forbidden(error.to_string()),
            MessagingError::InvalidReply(error) => Self::invalid_field("replyTo", error),
            MessagingError::Failed(error) => error.into(),
        }
    }
}

impl From<MessageChangeError> for ApiError {
    fn from(error: MessageChangeError) -> Self {
        match error {
            MessageChangeError::ConversationNotFound | MessageChangeError::MessageNotFound => {
                Self::not_found(error.to_string())
            }
            MessageChangeError::NoLongerMember => Self::forbidden(error.to_string()),
            MessageChangeError::Refused(refused) => match refused {
                ChangeError::NotSender | ChangeError::MayNotDelete | ChangeError::SystemEntry => {
                    Self::forbidden(refused.to_string())
                }
                ChangeError::Deleted => Self::conflict(refused.to_string()),
                ChangeError::EditWindowClosed { .. } => Self::validation(refused.to_string()),
                ChangeError::Reaction(error) => Self::invalid_field("emoji", error),
            },
            MessageChangeError::Failed(error) => error.into(),
        }
    }
}

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> Self {
        Self::from_group(error, "userIds")
    }
}

impl ApiError {
    /// A group use case's refusal; `list` is the request field that lists users (`members`
    /// when creating, `userIds` when adding), which errors about the list name.
    pub fn from_group(error: GroupError, list: &'static str) -> Self {
        let ids = |users: &[UserId]| users.iter().map(UserId::to_string).collect::<Vec<_>>();
        match error {
            GroupError::NotFound | GroupError::NotAMember(_) => Self::not_found(error.to_string()),
            GroupError::NoLongerMember | GroupError::NotAllowed => Self::forbidden(error.to_string()),
            GroupError::UnknownUsers(ref users) => Self::unknown_users(ids(users)),
            GroupError::DuplicateMembers(ref users) => {
                let users = ids(users);
                Self { field: Some(list), ..Self::validation(error.to_string()) }.about_users(users)
            }
            GroupError::AlreadyMembers(ref users) => {
                let users = ids(users);
                Self::conflict(error.to_string()).about_users(users)
            }
            GroupError::NoUsers | GroupError::TooManyMembers { .. } | GroupError::TooFewMembers { .. } => {
                Self { field: Some(list), ..Self::validation(error.to_string()) }
            }
            GroupError::OwnerRole => Self::conflict(error.to_string()),
            GroupError::Failed(error) => error.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use application::accounts::user_search;
    use domain::{Cursor, MessageBody};

    /// The status and the JSON body a client gets for `error`.
    async fn answer(error: impl Into<ApiError>) -> (StatusCode, serde_json::Value) {
        let response = error.into().error_response();
        let status = response.status();
        let body = actix_web::body::to_bytes(response.into_body()).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    async fn invalid(error: impl Into<ApiError>) -> (String, String) {
        let (status, body) = answer(error).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("VALIDATION")));
        (body["field"].as_str().unwrap().to_owned(), body["errMessage"].as_str().unwrap().to_owned())
    }

    #[tokio::test]
    async fn a_parse_error_names_its_field_and_the_rule() {
        let (field, message) = invalid(MessageBody::parse(" ").unwrap_err()).await;
        assert_eq!((field.as_str(), message.as_str()), ("message", "message must not be empty"));
    }

    #[tokio::test]
    async fn stream_cursors_are_since_and_page_cursors_are_cursor() {
        assert_eq!(invalid(Cursor::parse("01").unwrap_err()).await.0, "since");
        let (field, message) = invalid(InvalidCursor).await;
        assert_eq!((field.as_str(), message.as_str()), ("cursor", "cursor is not a valid cursor"));
    }

    #[tokio::test]
    async fn a_search_error_is_about_search() {
        let (field, message) = invalid(user_search::parse("a\0").unwrap_err()).await;
        assert_eq!((field.as_str(), message.as_str()), ("search", "search must not contain NUL characters"));
    }

    #[tokio::test]
    async fn a_sync_beyond_the_stream_is_about_since() {
        let (field, message) = invalid(MessagingError::BeyondStream).await;
        assert_eq!(field, "since");
        assert_eq!(message, "since is beyond the end of your message stream; sync from the start");
    }

    #[tokio::test]
    async fn errors_about_users_name_them_in_the_message_and_in_user_ids() {
        let (a, b) = (UserId::generate(), UserId::generate());
        let (status, body) = answer(GroupError::UnknownUsers(vec![a.clone(), b.clone()])).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("NOT_FOUND")));
        assert_eq!(body["userIds"], serde_json::json!([a.as_str(), b.as_str()]));
        assert_eq!(body["errMessage"], format!("unknown users: {a}, {b}"));
        let (status, body) = answer(GroupError::AlreadyMembers(vec![a.clone()])).await;
        assert_eq!((status, &body["userIds"]), (StatusCode::CONFLICT, &serde_json::json!([a.as_str()])));
        let (status, body) =
            answer(ApiError::from_group(GroupError::DuplicateMembers(vec![b.clone()]), "members")).await;
        assert_eq!(
            (status, &body["field"], &body["userIds"]),
            (StatusCode::BAD_REQUEST, &serde_json::json!("members"), &serde_json::json!([b.as_str()]))
        );
        let (_, plain) = answer(ApiError::not_found("user not found")).await;
        assert!(plain.get("userIds").is_none(), "{plain}");
    }

    #[tokio::test]
    async fn group_refusals_tell_strangers_former_members_and_roles_apart() {
        for (error, status) in [
            (GroupError::NotFound, StatusCode::NOT_FOUND),
            (GroupError::NoLongerMember, StatusCode::FORBIDDEN),
            (GroupError::NotAllowed, StatusCode::FORBIDDEN),
            (GroupError::NotAMember(UserId::generate()), StatusCode::NOT_FOUND),
            (GroupError::OwnerRole, StatusCode::CONFLICT),
            (GroupError::TooManyMembers { max: 3 }, StatusCode::BAD_REQUEST),
        ] {
            let shown = error.to_string();
            let (answered, body) = answer(error).await;
            assert_eq!(answered, status, "{shown}");
            assert_eq!(body["errMessage"], shown);
        }
        let (_, body) = answer(GroupError::TooManyMembers { max: 3 }).await;
        assert_eq!(body["field"], "userIds");
    }

    #[tokio::test]
    async fn the_shared_failures_answer_alike_from_every_use_case() {
        let down = || ApplicationError::Unavailable(anyhow::anyhow!("store down"));
        for (status, body) in
            [answer(AccountError::Failed(down())).await, answer(MessagingError::Failed(down())).await]
        {
            assert_eq!(
                (status, body["code"].as_str()),
                (StatusCode::SERVICE_UNAVAILABLE, Some("UNAVAILABLE"))
            );
        }
        let bug = || ApplicationError::Unexpected(anyhow::anyhow!("secret detail"));
        for (status, body) in
            [answer(AccountError::Failed(bug())).await, answer(MessagingError::Failed(bug())).await]
        {
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(body["errMessage"], "internal server error");
        }
    }
}
