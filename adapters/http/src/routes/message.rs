use actix_web::{web, HttpRequest, HttpResponse};
use application::messaging::conversation_cursor;
use application::{Authenticated, MessagingError, Sent};
use chat_realtime::wire::MessageDto;
use domain::{ClientMessageId, MessageBody, MessageId, SyncCursor, UserId};

use super::required;
use crate::auth::CurrentUser;
use crate::dto::{
    ConversationDto, ConversationSummaryDto, ConversationsQuery, Envelope, HistoryQuery, SendRequest,
    SyncPageDto, SyncQuery,
};
use crate::error::ApiError;
use crate::openapi::{
    ForeignOrigin, IdempotencyKeyReused, NotFound, PayloadTooLarge, RateLimited, Unauthenticated,
    Unavailable, UnsupportedMediaType, Validation,
};
use crate::state::AppState;

/// The request header that carries a send's idempotency key (IETF draft
/// `draft-ietf-httpapi-idempotency-key-header`).
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Sends a message; it is announced to the receiver's and my connections.
///
/// 400 for a missing or invalid `message`, for a message to oneself and for a `replyTo` that
/// is not a message of our conversation; 404 when the receiver is no user.
#[utoipa::path(
    post,
    path = "/api/v1/message/send/{receiverId}",
    tag = "message",
    operation_id = "sendMessage",
    params(
        ("receiverId" = String, Path, description = "The receiver's user id"),
        ("Idempotency-Key" = Option<String>, Header, description = "The same key as the body's \
            `clientMessageId` (either, or both when equal: 400 otherwise), optionally in double \
            quotes (an RFC 8941 string)"),
    ),
    request_body = SendRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 201, description = "Stored (and announced)", body = Envelope<MessageDto>),
        (status = 200, description = "A retry of an earlier send with the same key: the message \
            stored first, unchanged; nothing new stored or announced", body = Envelope<MessageDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = ForeignOrigin),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = IdempotencyKeyReused),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn send(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    receiver: web::Path<String>,
    request: HttpRequest,
    body: web::Json<SendRequest>,
) -> Result<HttpResponse, ApiError> {
    let (receiver, message) = outgoing(&state, &session, &request, &body, || path_user(&receiver))?;
    let sent = state
        .messaging
        .send(session.user_id(), &receiver, message.body, message.client_id, message.reply_to)
        .await?;
    Ok(sent_response(&sent))
}

/// A send's text, key and the message it answers, checked.
pub(super) struct Outgoing {
    pub body: MessageBody,
    pub client_id: Option<ClientMessageId>,
    pub reply_to: Option<MessageId>,
}

/// What every send route checks, in this order: the text is there, the key's two spellings
/// agree, the sender's allowance (spent by invalid sends too), where it goes (`target`), then
/// the text's and the key's rules.
pub(super) fn outgoing<T>(
    state: &AppState,
    session: &Authenticated,
    request: &HttpRequest,
    body: &SendRequest,
    target: impl FnOnce() -> Result<T, ApiError>,
) -> Result<(T, Outgoing), ApiError> {
    let text = required(&body.message, "message")?;
    let client_id = client_message_id(request, body.client_message_id.as_deref())?;
    state.limits.send(session.user_id().as_str())?;
    let target = target()?;
    let reply_to = body
        .reply_to
        .as_deref()
        .map(|raw| {
            MessageId::parse(raw).map_err(|_| ApiError::invalid_field("replyTo", "is not a message id"))
        })
        .transpose()?;
    let body = MessageBody::parse(text)?;
    let client_id = client_id.map(ClientMessageId::parse).transpose()?;
    Ok((target, Outgoing { body, client_id, reply_to }))
}

/// 201 with the message stored now; 200 with the one stored first, for a retry.
pub(super) fn sent_response(sent: &Sent) -> HttpResponse {
    let mut response = if sent.created { HttpResponse::Created() } else { HttpResponse::Ok() };
    response.json(Envelope::data(MessageDto::seen_by(&sent.message, &sent.message.sender_id)))
}

/// The user a path names: an id that is not one of ours names nobody, so it is the 404 of
/// an unknown user rather than a 400.
fn path_user(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|_| MessagingError::UserNotFound.into())
}

/// The send's idempotency key: the body's `clientMessageId` or the `Idempotency-Key` header
/// (an RFC 8941 string, so surrounding quotes are dropped); both must agree when both are given.
fn client_message_id<'a>(
    request: &'a HttpRequest,
    in_body: Option<&'a str>,
) -> Result<Option<&'a str>, ApiError> {
    let header = match request.headers().get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| ApiError::invalid_field("clientMessageId", "must be visible ASCII"))?
                .trim();
            let unquoted = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
            Some(unquoted)
        }
    };
    match (header, in_body) {
        (Some(header), Some(body)) if header != body => {
            Err(ApiError::invalid_field("clientMessageId", "differs from the Idempotency-Key header"))
        }
        (header, body) => Ok(body.or(header)),
    }
}

/// What I missed after a cursor, oldest first: the messages of my direct conversations and
/// of my groups (from joining to leaving each), and my reads on other devices. Keep the last
/// cursor processed and sync from it: nothing is missed, nothing comes twice.
///
/// 400 for a malformed `since`, one that does not describe my stream (other groups than mine
/// at its position, a seq before I joined), or one beyond the end of my stream or a group (a
/// cursor from another database).
#[utoipa::path(
    get,
    path = "/api/v1/message/sync",
    tag = "message",
    operation_id = "syncMessages",
    params(SyncQuery),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The next page of what I missed", body = Envelope<SyncPageDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn sync(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    query: web::Query<SyncQuery>,
) -> Result<HttpResponse, ApiError> {
    let since = SyncCursor::parse_optional(query.since.as_deref())?.unwrap_or(SyncCursor::START);
    let page = state.messaging.sync(session.user_id(), since, query.limit).await?;
    Ok(HttpResponse::Ok().json(Envelope::data(SyncPageDto::new(&page, session.user_id()))))
}

/// One page of my conversation with another user, oldest message first.
///
/// 400 for an invalid `limit` or `before` and for oneself as the other participant; 404 when
/// the other participant is no user.
#[utoipa::path(
    get,
    path = "/api/v1/message/get-messages/{otherId}",
    tag = "message",
    operation_id = "getMessages",
    params(("otherId" = String, Path, description = "The other participant's user id"), HistoryQuery),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The newest `limit` messages before `before`", body = Envelope<ConversationDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn history(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    other: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let me = session.user_id();
    let other = path_user(&other)?;
    let before = before(&query)?;
    let view = state.messaging.history(me, &other, before, query.limit).await?;
    Ok(HttpResponse::Ok().json(Envelope::data(ConversationDto::new(&view, me, &other))))
}

/// A history page's `before`: a message id, or nothing (empty counts as nothing).
pub(super) fn before(query: &HistoryQuery) -> Result<Option<MessageId>, ApiError> {
    query
        .before
        .as_deref()
        .filter(|b| !b.is_empty())
        .map(MessageId::parse)
        .transpose()
        .map_err(|e| ApiError::invalid_field("before", e))
}

/// My conversations, most recently updated first, each with its last message, up to 200 a
/// page. The next page's cursor, if any, is in `X-Next-Cursor`: a client that never pages
/// gets what it always got as long as it has at most 200 conversations.
///
/// A walk through the pages returns no conversation twice and ends; one that gets a message
/// meanwhile moves to the front and is skipped if the walk had not reached it yet.
#[utoipa::path(
    get,
    path = "/api/v1/message/conversations",
    tag = "message",
    operation_id = "listConversations",
    params(ConversationsQuery),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "One page of my conversations",
            body = Envelope<Vec<ConversationSummaryDto>>,
            headers(("X-Next-Cursor" = String,
                description = "Present when more conversations follow: the `cursor` of the next page"))),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn conversations(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    query: web::Query<ConversationsQuery>,
) -> Result<HttpResponse, ApiError> {
    let after = query.cursor.as_deref().map(conversation_cursor::decode).transpose()?.flatten();
    let page = state.messaging.conversations(session.user_id(), query.limit, after).await?;
    let mut response = HttpResponse::Ok();
    if let Some(cursor) = &page.next_cursor {
        response.insert_header(("X-Next-Cursor", cursor.as_str()));
    }
    let list: Vec<ConversationSummaryDto> = page
        .conversations
        .iter()
        .map(|summary| ConversationSummaryDto::new(summary, page.members.get(summary.conversation.id())))
        .collect();
    Ok(response.json(Envelope::data(list)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_id_that_is_no_user_id_is_an_unknown_user() {
        let id = UserId::generate();
        assert_eq!(path_user(id.as_str()).unwrap(), id);
        for raw in ["{\"$gt\":\"\"}", "", &id.as_str().to_uppercase()] {
            assert_eq!(path_user(raw).unwrap_err().to_string(), "NOT_FOUND user not found", "{raw}");
        }
    }
}
