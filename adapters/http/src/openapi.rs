//! The OpenAPI 3.1 document of the REST API, generated from the code: the handlers'
//! `#[utoipa::path]` annotations (routes, parameters, every status a route can answer), the
//! DTOs' `ToSchema`/`IntoParams` derives, and the error envelope of [`crate::ApiError`].
//! Served at `GET /api-docs/openapi.json`, with a small reference page at `GET /api-docs/`.
//!
//! The document is a contract the tests hold the server to: tests/tests/openapi.rs runs
//! Schemathesis against it (no 5xx, no undocumented status, every response matching its
//! schema, valid requests accepted and invalid ones refused).
//!
//! To document a new route: annotate its handler with `#[utoipa::path(...)]` (the error
//! answers are the reusable responses below, e.g. `(status = 400, response = Validation)`),
//! derive `ToSchema`/`IntoParams` on its DTOs, and list the handler in [`ApiDoc`]'s `paths`.

use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::HttpResponse;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr};
use utoipa::{Modify, OpenApi, ToResponse};

use crate::routes::{avatar, changes, conversations, health, message, user};

/// The name of the security scheme of the `token` cookie.
pub const COOKIE_AUTH: &str = "cookieAuth";
/// The name of the security scheme of `Authorization: Bearer`.
pub const BEARER_AUTH: &str = "bearerAuth";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Chat API",
        version = "1",
        description = "The REST side of the chat server (docs/API.md). Every success is \
            `{\"success\": true, \"responseData\": …}`, every failure \
            `{\"success\": false, \"errMessage\": …, \"code\": …}`. Authenticated routes take \
            the token from the `token` cookie (set by register and login) or from \
            `Authorization: Bearer <token>`. Real-time events (`/ws`, `/socket.io/`) are \
            described in docs/API.md.",
        license(name = "MIT"),
    ),
    paths(
        user::register,
        user::login,
        user::logout,
        user::profile,
        user::other_users,
        user::online,
        user::user,
        avatar::avatar,
        message::send,
        message::history,
        message::conversations,
        message::sync,
        conversations::create,
        conversations::get,
        conversations::rename,
        conversations::add_members,
        conversations::remove_member,
        conversations::set_role,
        conversations::transfer_ownership,
        conversations::leave,
        conversations::send,
        conversations::history,
        conversations::mark_read,
        changes::edit,
        changes::delete,
        changes::react,
        changes::unreact,
        health::healthz,
        health::readyz,
        metrics,
    ),
    components(
        schemas(ErrorEnvelope),
        responses(
            Validation,
            Unauthenticated,
            NotFound,
            UnknownUsers,
            Forbidden,
            Conflict,
            GroupConflict,
            MessageDeleted,
            PayloadTooLarge,
            UnsupportedMediaType,
            ForeignOrigin,
            IdempotencyKeyReused,
            RateLimited,
            Unavailable,
        ),
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "user", description = "Accounts and sessions"),
        (name = "message", description = "Messages and conversations"),
        (name = "conversation", description = "Groups, and conversations of both kinds by id: \
            sending, history, read positions, editing, deleting and reacting to messages"),
        (name = "operations", description = "Probes and metrics for operators"),
    ),
)]
pub struct ApiDoc;

/// The document as JSON, built once.
pub fn document() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| ApiDoc::openapi().to_pretty_json().expect("the OpenAPI document serializes"))
}

/// `GET /api-docs/openapi.json`.
pub async fn serve_document() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(document())
}

/// Redoc's standalone bundle, served from the binary (its MIT license is beside it in
/// `docs-page/`), so that the page works offline and runs no script from elsewhere. The
/// version is in the path: browsers may keep it for good.
const REDOC_PATH: &str = "/api-docs/redoc-3.0.1.standalone.js";
const REDOC: &[u8] = include_bytes!("../docs-page/redoc-3.0.1.standalone.js");

const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Chat API</title>
</head>
<body>
<redoc spec-url="/api-docs/openapi.json" disable-telemetry="true"></redoc>
<noscript>This page needs JavaScript; the document itself is at <a href="/api-docs/openapi.json">/api-docs/openapi.json</a>.</noscript>
<script type="module" src="/api-docs/redoc-3.0.1.standalone.js"></script>
</body>
</html>
"#;

/// The docs page's own policy: scripts from this server only, Redoc's injected styles and
/// its search worker (a `blob:`), requests to this origin only (the document); nothing else
/// loads, nothing frames it.
pub const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; \
    script-src 'self'; worker-src blob:; style-src 'unsafe-inline'; img-src 'self' data:; \
    font-src data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// `GET /api-docs/`: a reference page rendering the document.
pub async fn serve_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CONTENT_SECURITY_POLICY, DOCS_CONTENT_SECURITY_POLICY))
        .body(DOCS_PAGE)
}

/// Registers the page's script.
pub fn configure_assets(config: &mut actix_web::web::ServiceConfig) {
    config.route(
        REDOC_PATH,
        actix_web::web::get().to(|| async {
            HttpResponse::Ok()
                .content_type("text/javascript; charset=utf-8")
                .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
                .body(REDOC)
        }),
    );
}

/// Prometheus metrics in the text exposition format.
///
/// Off (404) when `metrics.enabled = false`; when on, restrict it at the proxy
/// (deploy/nginx.conf).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain", body = String),
        (status = 404, response = NotFound),
    ),
)]
#[allow(dead_code)] // Documents a route served elsewhere.
fn metrics() {}

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            COOKIE_AUTH,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "token",
                "The session cookie set by register and login (HttpOnly).",
            ))),
        );
        components.add_security_scheme(
            BEARER_AUTH,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("The `token` of register or login; wins over the cookie."))
                    .build(),
            ),
        );
    }
}

// ---------------------------------------------------------------------------------------
// The error envelope and the reusable error answers.

/// What every failure answers (see `crate::error::ApiError`).
#[derive(utoipa::ToSchema)]
#[schema(as = Error)]
#[allow(dead_code)] // A schema only: the body is written by `ApiError`.
pub struct ErrorEnvelope {
    /// Always `false`.
    #[schema(schema_with = fields::always_false)]
    success: bool,
    /// Human-readable; never internals.
    #[schema(rename = "errMessage")]
    err_message: String,
    #[schema(schema_with = error_code_any)]
    code: String,
    /// The request field at fault, for a `VALIDATION` error about one field (and `CONFLICT`).
    #[schema(nullable = false)]
    field: Option<String>,
    /// The users the error is about (unknown, listed twice, members already).
    #[schema(nullable = false, rename = "userIds")]
    user_ids: Option<Vec<String>>,
}

/// Every machine code of the error envelope.
pub const ERROR_CODES: &[&str] = &[
    "VALIDATION",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "METHOD_NOT_ALLOWED",
    "CONFLICT",
    "PAYLOAD_TOO_LARGE",
    "IDEMPOTENCY_KEY_REUSED",
    "RATE_LIMITED",
    "UNAVAILABLE",
    "INTERNAL",
];

fn error_code_any() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(ERROR_CODES.iter().copied())).into()
}

/// The envelope with `code` narrowed to `code`.
fn error_body(code: &'static str) -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property("success", fields::always_false())
        .required("success")
        .property("errMessage", ObjectBuilder::new().schema_type(Type::String))
        .required("errMessage")
        .property("code", ObjectBuilder::new().schema_type(Type::String).enum_values(Some([code])))
        .required("code")
        .property("field", ObjectBuilder::new().schema_type(Type::String))
        .property(
            "userIds",
            utoipa::openapi::schema::ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String)),
        )
        .additional_properties(Some(AdditionalProperties::FreeForm(false)))
        .into()
}

/// An error answer with `code`; `retry_after` adds the `Retry-After` header.
fn error_response(code: &'static str, description: &str, retry_after: bool) -> RefOr<Response> {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(error_body(code))).build());
    if retry_after {
        response = response.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
                .description(Some("Seconds to wait before trying again"))
                .build(),
        );
    }
    response.build().into()
}

macro_rules! error_responses {
    ($($name:ident => $code:literal, $retry_after:literal, $description:literal;)*) => {$(
        #[doc = $description]
        pub struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<Response>) {
                (stringify!($name), error_response($code, $description, $retry_after))
            }
        }
    )*};
}

error_responses! {
    Validation => "VALIDATION", false,
        "`VALIDATION`: a missing or invalid field (named in `field`), malformed JSON or a wrong type";
    Unauthenticated => "UNAUTHENTICATED", false,
        "`UNAUTHENTICATED`: no token, or an invalid, expired or revoked one";
    NotFound => "NOT_FOUND", false, "`NOT_FOUND`";
    Conflict => "CONFLICT", false, "`CONFLICT`: the username is taken (`field`: `username`)";
    UnknownUsers => "NOT_FOUND", false,
        "`NOT_FOUND`: no such group (or not mine), or users that don't exist (named in `userIds`)";
    Forbidden => "FORBIDDEN", false,
        "`FORBIDDEN`: my role may not do this, or I am no longer a member; or a browser page of \
        a foreign origin sent it";
    GroupConflict => "CONFLICT", false,
        "`CONFLICT`: users who are members already (named in `userIds`), or a change that would \
        leave the group without an owner";
    MessageDeleted => "CONFLICT", false, "`CONFLICT`: the message is deleted";
    PayloadTooLarge => "PAYLOAD_TOO_LARGE", false,
        "`PAYLOAD_TOO_LARGE`: the body is larger than `http.body_limit`";
    UnsupportedMediaType => "UNSUPPORTED_MEDIA_TYPE", false,
        "`UNSUPPORTED_MEDIA_TYPE`: the body is not sent as `application/json`";
    ForeignOrigin => "FORBIDDEN", false,
        "`FORBIDDEN`: sent by a browser page of an origin that is neither this server's nor allowed";
    IdempotencyKeyReused => "IDEMPOTENCY_KEY_REUSED", false,
        "`IDEMPOTENCY_KEY_REUSED`: the key was used before for another receiver or text";
    RateLimited => "RATE_LIMITED", true, "`RATE_LIMITED`: too many attempts; retry after `Retry-After` seconds";
    Unavailable => "UNAVAILABLE", true,
        "`UNAVAILABLE`: storage (or the fan-out bus) does not answer in time; retry shortly";
}

/// Schemas of single fields: the exact rules of the domain's parsers, as JSON Schema, so that
/// a value that matches is accepted and one that doesn't is refused.
///
/// Patterns are written in the common subset of ECMA-262 (OpenAPI), Python and Rust regex
/// syntax. Limits that the domain counts in bytes (passwords, avatars, the raw message) are
/// stated as character counts, exact for ASCII; the unit tests below check every pattern
/// against the parser it describes.
pub mod fields {
    use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Schema, Type};

    /// Rust's `char::is_whitespace` (Unicode `White_Space`): what `str::trim` removes.
    pub const WHITESPACE: &str = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
    /// Rust's `char::is_control` (general category `Cc`).
    pub const CONTROL: &str = r"\x00-\x1f\x7f-\x9f";

    /// `ranges` inside a character class. Characters beyond the BMP are written as themselves:
    /// no escape for them is common to ECMA-262, Python and Rust; ECMA-262 then reads them as
    /// one character each with the `u` flag, which JSON Schema 2020-12 asks validators to use.
    fn class_of(ranges: &[std::ops::RangeInclusive<char>]) -> String {
        let one = |c: char| match u16::try_from(u32::from(c)) {
            Ok(unit) => format!(r"\u{unit:04x}"),
            Err(_) => c.to_string(),
        };
        ranges
            .iter()
            .map(|r| match r.start() == r.end() {
                true => one(*r.start()),
                false => format!("{}-{}", one(*r.start()), one(*r.end())),
            })
            .collect()
    }

    /// `domain::text::HIDDEN` (text-direction, zero-width and other invisible characters).
    fn hidden() -> String {
        class_of(domain::text::HIDDEN)
    }

    /// `domain::text::JOINERS` (of emoji sequences and scripts; invisible by themselves).
    fn joiners() -> String {
        class_of(domain::text::JOINERS)
    }

    /// Contains a visible character (`domain::text::is_visible`); not anchored.
    pub fn visible_pattern() -> String {
        format!("[^{CONTROL}{WHITESPACE}{}{}]", hidden(), joiners())
    }

    pub const USERNAME: &str = r"^[A-Za-z0-9_.-]{3,32}$";
    pub const USER_CURSOR: &str = r"^(?:[A-Za-z0-9_.-]{3,32})?$";
    /// A stream cursor (`domain::Cursor`) or nothing. Cursors of 19 digits up to `i64::MAX`
    /// parse too, but no stream gets that long: they are beyond every stream's end (400).
    pub const STREAM_CURSOR_OR_EMPTY: &str = r"^(?:0|[1-9][0-9]{0,17})?$";
    /// A conversation-list cursor (`application::messaging::conversation_cursor`) or nothing.
    pub const CONVERSATION_CURSOR: &str = concat!(
        r"^(?:(?:0|[1-9][0-9]{0,15})\.",
        r"(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?\.",
        r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$"
    );
    pub const ID_OR_EMPTY: &str = r"^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$";
    /// An id of a user, a conversation or a message.
    pub const ID: &str = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
    /// A sync cursor (`domain::SyncCursor`) or nothing: a stream position, then for each group
    /// `~<group id>.<seq>`, groups in id order.
    pub const SYNC_CURSOR_OR_EMPTY: &str = concat!(
        r"^(?:(?:0|[1-9][0-9]{0,17})",
        r"(?:~[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.(?:0|[1-9][0-9]{0,17}))*)?$"
    );

    /// White space around 1–`max` characters of `inner` that start and end with `edge`.
    fn trimmed(edge: &str, inner: &str, max: usize, optional: bool) -> String {
        let ws = WHITESPACE;
        let core = format!("{edge}(?:{inner}{{0,{}}}{edge})?", max - 2);
        let core = if optional { format!("(?:{core})?") } else { core };
        format!("^[{ws}]*{core}[{ws}]*$")
    }

    pub fn message_pattern() -> String {
        let ws = WHITESPACE;
        trimmed(&format!(r"[^\x00{ws}]"), r"[^\x00]", domain::MessageBody::MAX, false)
    }

    pub fn full_name_pattern() -> String {
        visible_name_pattern(domain::FullName::MAX)
    }

    /// A group's name: the rules of a full name, up to `GroupName::MAX` characters.
    pub fn group_name_pattern() -> String {
        visible_name_pattern(domain::GroupName::MAX)
    }

    /// 1–`max` characters once trimmed, starting with a visible one, without control or
    /// hidden characters (full names, group names).
    fn visible_name_pattern(max: usize) -> String {
        let (ws, cc, hidden, joiners) = (WHITESPACE, CONTROL, hidden(), joiners());
        // A visible character first; joiners after it; control and hidden ones nowhere.
        let first = format!("[^{cc}{ws}{hidden}{joiners}]");
        let (inner, last) = (format!("[^{cc}{hidden}]"), format!("[^{cc}{ws}{hidden}]"));
        let more = max - 2;
        format!("^[{ws}]*{first}(?:{inner}{{0,{more}}}{last})?[{ws}]*$")
    }

    pub fn search_pattern() -> String {
        let ws = WHITESPACE;
        let max = application::accounts::user_search::MAX_CHARS;
        trimmed(&format!(r"[^\x00{ws}]"), r"[^\x00]", max, true)
    }

    pub fn avatar_pattern() -> String {
        let (ws, cc) = (WHITESPACE, CONTROL);
        let max = domain::Avatar::MAX;
        // A host (not empty), then anything without white space or control characters.
        let host = format!("[^/?#{cc}{ws}]");
        let rest = format!("[^{cc}{ws}]");
        let (http, https) = (max - "http://".len() - 1, max - "https://".len() - 1);
        format!("^[{ws}]*(?:http://{host}{rest}{{0,{http}}}|https://{host}{rest}{{0,{https}}})?[{ws}]*$")
    }

    fn string() -> ObjectBuilder {
        ObjectBuilder::new().schema_type(Type::String)
    }

    pub fn always_true() -> Schema {
        ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([true])).into()
    }

    pub fn always_false() -> Schema {
        ObjectBuilder::new().schema_type(Type::Boolean).enum_values(Some([false])).into()
    }

    pub fn username() -> Schema {
        string()
            .description(Some("3–32 characters of `A-Z a-z 0-9 _ . -`, unique case-insensitively"))
            .pattern(Some(USERNAME))
            .examples(["alice"])
            .into()
    }

    pub fn full_name() -> Schema {
        string()
            .description(Some(
                "1–64 characters once white space around it is trimmed, starting with a visible \
                 one; no control, text-direction or invisible characters (joiners of emoji \
                 sequences and scripts, and variation selectors, are kept)",
            ))
            .pattern(Some(full_name_pattern()))
            .examples(["Alice Liddell"])
            .into()
    }

    pub fn new_password() -> Schema {
        string()
            .description(Some("8–72 bytes (bcrypt's limit) in UTF-8"))
            .min_length(Some(domain::Password::MIN_BYTES))
            .max_length(Some(domain::Password::MAX_BYTES))
            .examples(["correct horse battery"])
            .into()
    }

    pub fn gender_in() -> Schema {
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
            .description(Some("`male`, `female` or `other`; empty or null for none"))
            .enum_values(Some([
                serde_json::json!("male"),
                serde_json::json!("female"),
                serde_json::json!("other"),
                serde_json::json!(""),
                serde_json::Value::Null,
            ]))
            .into()
    }

    pub fn avatar() -> Schema {
        ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]))
            .description(Some(
                "An http(s) URL with a host, without white space or control characters, at \
                 most 2048 bytes once trimmed; empty or null for a generated default",
            ))
            .pattern(Some(avatar_pattern()))
            .examples(["https://example.com/alice.png"])
            .into()
    }

    /// Two patterns, as one can't both bound the length and require a visible character.
    pub fn message_text() -> Schema {
        let length = string().pattern(Some(message_pattern())).max_length(Some(domain::MessageBody::MAX * 4));
        AllOfBuilder::new()
            .description(Some(
                "The text, stored exactly as sent: 1–5000 characters once white space around \
                 it is trimmed, at least one of them visible (not only white space, zero-width, \
                 format or control characters), no NUL, at most 20000 bytes in all",
            ))
            .item(length)
            .item(string().pattern(Some(visible_pattern())))
            .examples(["Hello!"])
            .into()
    }

    pub fn search() -> Schema {
        string()
            .description(Some(
                "The start of a username, a full name or a word of it, case-insensitive and \
                 literal; white space around it is ignored; at most 64 characters, no NUL",
            ))
            .pattern(Some(search_pattern()))
            .into()
    }

    pub fn user_cursor() -> Schema {
        string()
            .description(Some("The `X-Next-Cursor` of the previous page; empty or absent for the first page"))
            .pattern(Some(USER_CURSOR))
            .into()
    }

    pub fn conversation_cursor() -> Schema {
        string()
            .description(Some(
                "The `X-Next-Cursor` of the previous page (opaque); empty or absent for the \
                 first page",
            ))
            .pattern(Some(CONVERSATION_CURSOR))
            .into()
    }

    /// Any `u32`: default and at most 200 (capped), 0 counts as 1.
    pub fn conversation_page_limit() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .description(Some(
                "Conversations per page: default and at most 200 (larger values are capped, 0 \
                 counts as 1)",
            ))
            .minimum(Some(0))
            .maximum(Some(u32::MAX))
            .into()
    }

    pub fn stream_cursor_or_empty() -> Schema {
        string()
            .description(Some(
                "The last cursor processed (a `newMessage` event's `cursor` or a page's \
                 `nextCursor`); empty or absent to start from the first message",
            ))
            .pattern(Some(STREAM_CURSOR_OR_EMPTY))
            .into()
    }

    pub fn id() -> Schema {
        string().pattern(Some(ID)).into()
    }

    pub fn group_name() -> Schema {
        string()
            .description(Some(
                "1–100 characters once white space around it is trimmed, starting with a visible \
                 one; no control, text-direction or invisible characters",
            ))
            .pattern(Some(group_name_pattern()))
            .examples(["Weekend hikers"])
            .into()
    }

    /// User ids, at least one, each once.
    pub fn member_ids() -> Schema {
        utoipa::openapi::schema::ArrayBuilder::new()
            .items(string().pattern(Some(ID)))
            .min_items(Some(1))
            .unique_items(true)
            .into()
    }

    pub fn assignable_role() -> Schema {
        string().description(Some("`admin` or `member`")).enum_values(Some(["admin", "member"])).into()
    }

    /// `kind` of a group.
    pub fn group_kind() -> Schema {
        string().enum_values(Some(["group"])).into()
    }

    pub fn direct_kind() -> Schema {
        string().enum_values(Some(["direct"])).into()
    }

    /// `kind` of a conversation.
    pub fn conversation_kind() -> Schema {
        string().enum_values(Some(["direct", "group"])).into()
    }

    /// A path's conversation id: a malformed one names no conversation (404).
    pub fn conversation_id() -> Schema {
        string().description(Some("A conversation id (of a group or a direct conversation)")).into()
    }

    pub fn sync_cursor_or_empty() -> Schema {
        string()
            .description(Some(
                "The last cursor processed (a `newMessage` event's `cursor` or a page's \
                 `nextCursor`, opaque); empty or absent to start from the beginning",
            ))
            .pattern(Some(SYNC_CURSOR_OR_EMPTY))
            .into()
    }

    pub fn message_id_or_empty() -> Schema {
        string()
            .description(Some("A message id: only older messages; empty or absent for the newest"))
            .pattern(Some(ID_OR_EMPTY))
            .into()
    }

    /// Any `u32`: default 50, larger than 200 is capped, 0 counts as 1.
    pub fn page_limit() -> Schema {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .description(Some(
                "Items per page: default 50, at most 200 (larger values are capped, 0 counts as 1)",
            ))
            .minimum(Some(0))
            .maximum(Some(u32::MAX))
            .into()
    }

    /// `gender` of a user.
    #[derive(utoipa::ToSchema)]
    #[schema(rename_all = "lowercase")]
    #[allow(dead_code)] // A schema only.
    pub enum Gender {
        Male,
        Female,
        Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn doc() -> Value {
        serde_json::from_str(document()).unwrap()
    }

    #[test]
    fn the_document_lists_every_rest_route_with_its_method() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let expected = [
            ("/api/v1/user/register", "post"),
            ("/api/v1/user/login", "post"),
            ("/api/v1/user/logout", "post"),
            ("/api/v1/user/get-profile", "get"),
            ("/api/v1/user/get-other-users", "get"),
            ("/api/v1/user/online", "get"),
            ("/api/v1/user/{id}", "get"),
            ("/api/v1/user/{id}/avatar", "get"),
            ("/api/v1/message/send/{receiverId}", "post"),
            ("/api/v1/message/get-messages/{otherId}", "get"),
            ("/api/v1/message/conversations", "get"),
            ("/api/v1/message/sync", "get"),
            ("/api/v1/conversations", "post"),
            ("/api/v1/conversations/{id}", "get"),
            ("/api/v1/conversations/{id}", "patch"),
            ("/api/v1/conversations/{id}/members", "post"),
            ("/api/v1/conversations/{id}/members/{userId}", "delete"),
            ("/api/v1/conversations/{id}/members/{userId}/role", "put"),
            ("/api/v1/conversations/{id}/owner", "post"),
            ("/api/v1/conversations/{id}/leave", "post"),
            ("/api/v1/conversations/{id}/messages", "get"),
            ("/api/v1/conversations/{id}/messages", "post"),
            ("/api/v1/conversations/{id}/read", "post"),
            ("/api/v1/conversations/{id}/messages/{messageId}", "patch"),
            ("/api/v1/conversations/{id}/messages/{messageId}", "delete"),
            ("/api/v1/conversations/{id}/messages/{messageId}/reactions/{emoji}", "put"),
            ("/api/v1/conversations/{id}/messages/{messageId}/reactions/{emoji}", "delete"),
            ("/healthz", "get"),
            ("/readyz", "get"),
            ("/metrics", "get"),
        ];
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in expected {
            assert!(paths[path][method].is_object(), "{method} {path} is documented");
        }
        let operations: usize = paths.values().map(|item| item.as_object().unwrap().len()).sum();
        assert_eq!(
            operations,
            expected.len(),
            "a route was documented: list it here too (and keep the route table, the document \
             and docs/API.md in step): {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }

    #[test]
    fn authenticated_routes_take_the_cookie_or_a_bearer_token_and_document_401() {
        let doc = doc();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes[COOKIE_AUTH]["in"], "cookie");
        assert_eq!(schemes[COOKIE_AUTH]["name"], "token");
        assert_eq!(schemes[BEARER_AUTH]["scheme"], "bearer");
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                let secured = operation.get("security").is_some();
                let public = path.starts_with("/api/v1/user/register")
                    || path.starts_with("/api/v1/user/login")
                    || !path.starts_with("/api/");
                assert_eq!(secured, !public, "{method} {path}");
                if secured {
                    assert!(operation["responses"]["401"].is_object(), "{method} {path} documents 401");
                }
            }
        }
    }

    #[test]
    fn operations_with_a_body_document_400_and_413() {
        for (path, item) in doc()["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                if operation.get("requestBody").is_some() {
                    for status in ["400", "413"] {
                        assert!(operation["responses"][status].is_object(), "{method} {path} {status}");
                    }
                }
            }
        }
    }

    #[test]
    fn error_answers_carry_their_code_and_retry_after_where_sent() {
        let doc = doc();
        let responses = &doc["components"]["responses"];
        let code = |name: &str| {
            responses[name]["content"]["application/json"]["schema"]["properties"]["code"]["enum"][0].clone()
        };
        assert_eq!(code("Validation"), "VALIDATION");
        assert_eq!(code("RateLimited"), "RATE_LIMITED");
        assert!(responses["RateLimited"]["headers"]["Retry-After"].is_object());
        assert!(responses["Unavailable"]["headers"]["Retry-After"].is_object());
    }

    mod patterns {
        use super::super::fields::*;
        use domain::{Avatar, FullName, MessageBody, Username};
        use proptest::prelude::*;

        /// `pattern` compiled, once per pattern.
        fn regex(pattern: &str) -> regex::Regex {
            static CACHE: std::sync::Mutex<Vec<(String, regex::Regex)>> = std::sync::Mutex::new(Vec::new());
            let mut cache = CACHE.lock().unwrap();
            if let Some((_, compiled)) = cache.iter().find(|(p, _)| p == pattern) {
                return compiled.clone();
            }
            let compiled = regex::RegexBuilder::new(pattern).size_limit(1 << 26).build().unwrap();
            cache.push((pattern.to_owned(), compiled.clone()));
            compiled
        }

        /// Strings mixing the characters the rules are about: white space of every kind,
        /// controls, NUL, URL punctuation, letters, and anything else.
        fn text(max: usize) -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just(' '),
                Just('\t'),
                Just('\n'),
                Just('\u{a0}'),
                Just('\u{3000}'),
                Just('\u{1c}'),
                Just('\u{85}'),
                // Invisible: zero-width, text direction, joiner, variation selector, tag.
                Just('\u{200b}'),
                Just('\u{202e}'),
                Just('\u{200d}'),
                Just('\u{fe0f}'),
                Just('\u{e0041}'),
                Just('\0'),
                Just('\u{7f}'),
                Just('/'),
                Just('#'),
                Just('?'),
                Just(':'),
                prop::char::range('a', 'z'),
                any::<char>(),
            ];
            prop_oneof![
                prop::collection::vec(piece.clone(), 0..12).prop_map(|c| c.into_iter().collect()),
                (
                    prop_oneof![Just("http://"), Just("https://"), Just(" https://"), Just("")],
                    prop::collection::vec(piece.clone(), 0..12)
                )
                    .prop_map(|(p, c)| format!("{p}{}", c.into_iter().collect::<String>())),
                (1..max + 3, piece.clone())
                    .prop_map(|(n, c)| std::iter::repeat_n('x', n).chain([c]).collect()),
                (1..max + 3, piece)
                    .prop_map(|(n, c)| std::iter::once(c).chain(std::iter::repeat_n('x', n)).collect()),
            ]
        }

        /// Cursors and near misses: the three parts, each well-formed or slightly off.
        fn conversation_cursor_text() -> impl Strategy<Value = String> {
            const UUID: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
            let time = prop_oneof!["0|[1-9][0-9]{0,15}", "[0-9]{0,18}", "-?[0-9a-z ]{0,4}"];
            let id = prop_oneof![UUID, "[0-9a-fA-F-]{30,38}", Just(String::new()), ".{0,6}"];
            prop_oneof![
                (time, id.clone(), id).prop_map(|(t, m, c)| format!("{t}.{m}.{c}")),
                (".{0,80}", ".{0,3}").prop_map(|(a, b)| format!("{a}.{b}")),
                ".{0,90}",
            ]
        }

        /// Sync cursors and near misses: a position, then groups, each part well-formed or
        /// slightly off.
        fn sync_cursor_text() -> impl Strategy<Value = String> {
            const UUID: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";
            let number = prop_oneof!["0|[1-9][0-9]{0,17}", "[0-9]{0,20}", "-?[0-9a-z ]{0,3}"];
            let id = prop_oneof![UUID, "[0-9a-fA-F-]{30,38}", ".{0,4}"];
            let group = (id, number.clone(), prop_oneof![Just("."), Just(""), Just("..")])
                .prop_map(|(id, seq, dot)| format!("~{id}{dot}{seq}"));
            prop_oneof![
                (number, prop::collection::vec(group, 0..3)).prop_map(|(p, g)| format!("{p}{}", g.concat())),
                ".{0,60}",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn the_conversation_cursor_pattern_is_the_parser(s in conversation_cursor_text()) {
                use application::messaging::conversation_cursor;
                // Empty is the first page.
                let accepted = conversation_cursor::decode(&s).is_ok();
                prop_assert_eq!(regex(CONVERSATION_CURSOR).is_match(&s), accepted, "{:?}", s);
            }

            #[test]
            fn the_username_pattern_is_the_parser(s in text(Username::MAX)) {
                prop_assert_eq!(regex(USERNAME).is_match(&s), Username::parse(&s).is_ok(), "{:?}", s);
            }

            #[test]
            fn the_full_name_pattern_is_the_parser(s in text(FullName::MAX)) {
                prop_assert_eq!(regex(&full_name_pattern()).is_match(&s), FullName::parse(&s).is_ok(), "{:?}", s);
            }

            #[test]
            fn the_message_pattern_is_the_parser(s in text(MessageBody::MAX)) {
                let schema_valid = regex(&message_pattern()).is_match(&s)
                    && regex(&visible_pattern()).is_match(&s)
                    && s.chars().count() <= MessageBody::MAX * 4;
                // Exact for ASCII; beyond it the byte limit can refuse a few more.
                if s.is_ascii() || !schema_valid {
                    prop_assert_eq!(schema_valid, MessageBody::parse(&s).is_ok(), "{:?}", s);
                }
            }

            #[test]
            fn the_avatar_pattern_is_the_parser(s in text(Avatar::MAX)) {
                // Empty once trimmed means "the default", as register does.
                let accepted = s.trim().is_empty() || Avatar::parse(&s).is_ok();
                if s.is_ascii() {
                    prop_assert_eq!(regex(&avatar_pattern()).is_match(&s), accepted, "{:?}", s);
                } else if regex(&avatar_pattern()).is_match(&s) && s.len() <= Avatar::MAX {
                    prop_assert!(accepted, "{:?}", s);
                }
            }

            #[test]
            fn the_stream_cursor_pattern_is_the_parser(s in prop_oneof![text(20), "[0-9]{0,20}"]) {
                let accepted = domain::Cursor::parse_optional(Some(&s)).is_ok_and(|_| s.len() <= 18);
                prop_assert_eq!(regex(STREAM_CURSOR_OR_EMPTY).is_match(&s), accepted, "{:?}", s);
            }

            #[test]
            fn the_group_name_pattern_is_the_parser(s in text(domain::GroupName::MAX)) {
                let accepted = domain::GroupName::parse(&s).is_ok();
                prop_assert_eq!(regex(&group_name_pattern()).is_match(&s), accepted, "{:?}", s);
            }

            #[test]
            fn the_sync_cursor_pattern_accepts_every_cursor_and_orders_groups_only_by_rule(
                s in sync_cursor_text()
            ) {
                let parsed = domain::SyncCursor::parse_optional(Some(&s));
                let matched = regex(SYNC_CURSOR_OR_EMPTY).is_match(&s);
                // Groups in id order, each once, is a rule no pattern states: it is checked
                // when the cursor is used (400).
                // Numbers of 19 digits parse but lie beyond every stream (400 too).
                let short = |c: &domain::SyncCursor| {
                    c.stream.position() < 10u64.pow(18) && c.groups.values().all(|seq| *seq < 10u64.pow(18))
                };
                if parsed.as_ref().is_ok_and(|c| c.as_ref().is_none_or(short)) {
                    prop_assert!(matched, "{:?}", s);
                }
                if matched && s.matches('~').count() <= 1 {
                    prop_assert!(parsed.is_ok(), "{:?}", s);
                }
            }

            #[test]
            fn the_search_pattern_is_the_parser(s in text(64)) {
                let accepted = application::accounts::user_search::parse(&s).is_ok();
                prop_assert_eq!(regex(&search_pattern()).is_match(&s), accepted, "{:?}", s);
            }
        }
    }
}
