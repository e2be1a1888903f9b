//! `/api/v1/conversations/{id}/messages/{messageId}`: changing a sent message — editing it,
//! deleting it, reacting to it and taking a reaction back. Each answers with the message as it
//! stands after the request, and a change is announced as `messageUpdated`; the same request
//! twice changes nothing the second time (200 with the same message, no announcement).

use actix_web::{web, HttpResponse};
use application::{Authenticated, ChangeResult};
use chat_realtime::wire::MessageDto;
use domain::{ConversationId, Emoji, MessageBody, MessageId, UserId};

use super::conversations::path_conversation;
use super::required;
use crate::auth::CurrentUser;
use crate::dto::conversations::EditRequest;
use crate::dto::Envelope;
use crate::error::ApiError;
use crate::openapi::{
    Forbidden, MessageDeleted, NotFound, PayloadTooLarge, RateLimited, Unauthenticated, Unavailable,
    UnsupportedMediaType, Validation,
};
use crate::state::AppState;

/// The conversation and message a path names: ids that are not ours name none (404).
fn path_message(conversation: &str, message: &str) -> Result<(ConversationId, MessageId), ApiError> {
    let conversation = path_conversation(conversation)?;
    let message = MessageId::parse(message)
        .map_err(|_| ApiError::not_found("message not found in this conversation"))?;
    Ok((conversation, message))
}

/// The emoji a path names (percent-encoded UTF-8, or a `:shortcode:`).
fn path_emoji(raw: &str) -> Result<Emoji, ApiError> {
    Emoji::parse(raw).map_err(|error| ApiError::invalid_field("emoji", error))
}

/// The message as it stands after the request, as I see it.
fn changed(result: &ChangeResult, me: &UserId) -> HttpResponse {
    HttpResponse::Ok().json(Envelope::data(MessageDto::seen_by(result.message(), me)))
}

/// Edits my message: its text is replaced and it gains `editedAt`; it keeps its id and place.
/// The previous text is not kept.
///
/// 400 for an empty or invalid `message` and once `messages.edit_window` (24 hours unless
/// configured) has passed since it was sent; 403 for someone else's message or a system
/// entry; 404 for a message that is not in the conversation or a conversation I am not in;
/// 409 for a deleted message.
#[utoipa::path(
    patch,
    path = "/api/v1/conversations/{id}/messages/{messageId}",
    tag = "conversation",
    operation_id = "editMessage",
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("messageId" = String, Path, description = "The message's id"),
    ),
    request_body = EditRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The message as it stands (the same edit again changes nothing)",
            body = Envelope<MessageDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = MessageDeleted),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn edit(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    path: web::Path<(String, String)>,
    body: web::Json<EditRequest>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, message) = path_message(&path.0, &path.1)?;
    let text = required(&body.message, "message")?;
    state.limits.send(session.user_id().as_str())?;
    let text = MessageBody::parse(text)?;
    let me = session.user_id();
    let result = state.changes.edit(me, &conversation, &message, text).await?;
    Ok(changed(&result, me))
}

/// Deletes a message: my own, or in a group where I am an admin or the owner, anyone's. It
/// stays in its place as a tombstone (`deletedAt`, no text, no reactions) everywhere.
///
/// 403 for someone else's message (unless I manage the group) or a system entry; 404 for a
/// message that is not in the conversation or a conversation I am not in.
#[utoipa::path(
    delete,
    path = "/api/v1/conversations/{id}/messages/{messageId}",
    tag = "conversation",
    operation_id = "deleteMessage",
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("messageId" = String, Path, description = "The message's id"),
    ),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The tombstone (deleting again changes nothing)", body = Envelope<MessageDto>),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn delete(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, message) = path_message(&path.0, &path.1)?;
    state.limits.send(session.user_id().as_str())?;
    let me = session.user_id();
    let result = state.changes.delete(me, &conversation, &message).await?;
    Ok(changed(&result, me))
}

/// Adds my reaction with an emoji: one per user per emoji, at most 20 different emoji per
/// message. The emoji is one emoji of the Unicode set (any qualification; stored fully
/// qualified) or a GitHub `:shortcode:`, percent-encoded in the path.
///
/// 400 for what is not one emoji, and for a 21st different emoji; 403 for a system entry;
/// 404 for a message that is not in the conversation or a conversation I am not in; 409 for
/// a deleted message.
#[utoipa::path(
    put,
    path = "/api/v1/conversations/{id}/messages/{messageId}/reactions/{emoji}",
    tag = "conversation",
    operation_id = "addReaction",
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("messageId" = String, Path, description = "The message's id"),
        ("emoji" = String, Path, description = "The emoji, percent-encoded (`%F0%9F%91%8D`), or `:thumbsup:`"),
    ),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The message as it stands (reacting again changes nothing)",
            body = Envelope<MessageDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = MessageDeleted),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn react(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    reaction(&state, &session, &path, Reaction::Add).await
}

/// Takes my reaction with an emoji back; without one (or on a deleted message) nothing
/// changes.
///
/// 400 for what is not one emoji; 403 for a system entry; 404 for a message that is not in
/// the conversation or a conversation I am not in.
#[utoipa::path(
    delete,
    path = "/api/v1/conversations/{id}/messages/{messageId}/reactions/{emoji}",
    tag = "conversation",
    operation_id = "removeReaction",
    params(
        ("id" = String, Path, description = "The conversation's id"),
        ("messageId" = String, Path, description = "The message's id"),
        ("emoji" = String, Path, description = "The emoji, percent-encoded, or `:thumbsup:`"),
    ),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The message as it stands", body = Envelope<MessageDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = RateLimited),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn unreact(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    path: web::Path<(String, String, String)>,
) -> Result<HttpResponse, ApiError> {
    reaction(&state, &session, &path, Reaction::TakeBack).await
}

enum Reaction {
    Add,
    TakeBack,
}

/// Adds or takes back my reaction with the emoji of `path` (conversation, message, emoji).
async fn reaction(
    state: &AppState,
    session: &Authenticated,
    path: &(String, String, String),
    what: Reaction,
) -> Result<HttpResponse, ApiError> {
    let (conversation, message) = path_message(&path.0, &path.1)?;
    let emoji = path_emoji(&path.2)?;
    state.limits.send(session.user_id().as_str())?;
    let me = session.user_id();
    let result = match what {
        Reaction::Add => state.changes.react(me, &conversation, &message, emoji).await?,
        Reaction::TakeBack => state.changes.unreact(me, &conversation, &message, emoji).await?,
    };
    Ok(changed(&result, me))
}
