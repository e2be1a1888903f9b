//! The error envelope: every failure leaves as
//! `{"success": false, "errMessage": …, "code": …}` with a fitting status, mapped here once.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use application::accounts::user_search::SearchError;
use application::paging::InvalidCursor;
use application::{AccountError, ApplicationError, MessagingError};
use domain::{
    AvatarError, ClientMessageIdError, CursorError, FullNameError, GenderError, MessageBodyError,
    PasswordError, UsernameError,
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
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    success: bool,
    err_message: &'a str,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), field: None, retry_after: None }
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

    pub fn method_not_implemented() -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, "NOT_IMPLEMENTED", "this request method is not supported")
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
            AccountError::UsernameTaken => {
                Self { field: Some("username"), ..Self::new(StatusCode::CONFLICT, "CONFLICT", "username is already taken") }
            }
            AccountError::InvalidCredentials => Self::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHENTICATED",
                "invalid username or password",
            ),
            AccountError::Unauthenticated => Self::unauthenticated(),
            AccountError::Failed(error) => error.into(),
        }
    }
}

impl From<MessagingError> for ApiError {
    fn from(error: MessagingError) -> Self {
        match error {
            MessagingError::UserNotFound => Self::not_found("user not found"),
            MessagingError::SelfConversation => {
                Self::validation("you cannot send messages to yourself")
            }
            MessagingError::ClientIdReused => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "IDEMPOTENCY_KEY_REUSED",
                error.to_string(),
            ),
            MessagingError::BeyondStream => Self::invalid_field(
                "since",
                "is beyond the end of your message stream; sync from the start",
            ),
            MessagingError::Failed(error) => error.into(),
        }
    }
}
