//! `/api/v1/conversations`: groups and their members, and what works alike for both kinds of
//! conversation, by id — sending, reading the history, marking read.

use actix_web::{web, HttpRequest, HttpResponse};
use application::GroupUpdate;
use chat_realtime::wire::MessageDto;
use domain::{ConversationId, GroupName, MessageId, UserId};

use super::message::{before, outgoing, sent_response};
use super::required;
use crate::auth::CurrentUser;
use crate::dto::conversations::{
    assignable_role, AddMembersRequest, ConversationDetailDto, CreateGroupRequest, DirectConversationDto,
    GroupDto, OwnerRequest, ReadRequest, ReadStateDto, RenameRequest, RoleRequest,
};
use crate::dto::{Envelope, HistoryQuery, SendRequest};
use crate::error::ApiError;
use crate::openapi::{
    Forbidden, GroupConflict, IdempotencyKeyReused, NotFound, PayloadTooLarge, RateLimited, Unauthenticated,
    Unavailable, UnknownUsers, UnsupportedMediaType, Validation,
};
use crate::state::AppState;

/// The conversation a path names: an id that is not one of ours names none (404).
pub(super) fn path_conversation(raw: &str) -> Result<ConversationId, ApiError> {
    ConversationId::parse(raw).map_err(|_| ApiError::not_found("conversation not found"))
}

/// The member a path names: an id that is not one of ours names nobody in the group (404).
fn path_member(raw: &str) -> Result<UserId, ApiError> {
    UserId::parse(raw).map_err(|_| ApiError::not_found("user is not a member of this group"))
}

/// A body's list of user ids, required and not empty: the well-formed ids, and the entries
/// that are no user id (each once).
fn user_ids(list: &Option<Vec<String>>, field: &'static str) -> Result<(Vec<UserId>, Vec<String>), ApiError> {
    let list = list.as_deref().ok_or_else(|| ApiError::invalid_field(field, "is required"))?;
    if list.is_empty() {
        return Err(ApiError::invalid_field(field, "must name at least one user"));
    }
    let mut ids = Vec::with_capacity(list.len());
    let mut malformed: Vec<String> = Vec::new();
    for raw in list {
        match UserId::parse(raw) {
            Ok(id) => ids.push(id),
            Err(_) if !malformed.contains(raw) => malformed.push(raw.clone()),
            Err(_) => {}
        }
    }
    Ok((ids, malformed))
}

/// The users a body names, all of whom exist: else 404 naming every entry that is no user's,
/// the text that is no user id with the ids of users that don't exist.
async fn existing_users(
    state: &AppState,
    list: &Option<Vec<String>>,
    field: &'static str,
) -> Result<Vec<UserId>, ApiError> {
    let (ids, mut unknown) = user_ids(list, field)?;
    if unknown.is_empty() {
        return Ok(ids);
    }
    let missing = state.groups.unknown_users(&ids).await?;
    for id in missing {
        let id = id.to_string();
        if !unknown.contains(&id) {
            unknown.push(id);
        }
    }
    Err(ApiError::unknown_users(unknown))
}

/// A change's answer: the group as it stands after it.
fn group_answer(update: &GroupUpdate) -> HttpResponse {
    HttpResponse::Ok().json(Envelope::data(GroupDto::from(&update.state)))
}

/// Creates a group with me as its owner and the users named as members. Its first entry
/// records the creation; each member's devices hear of it (`newMessage`).
///
/// 400 for an invalid name, an empty list, a user listed twice or me listed, or more members
/// than `groups.max_members`; 404 naming every id that is no user's.
#[utoipa::path(
    post,
    path = "/api/v1/conversations",
    tag = "conversation",
    operation_id = "createGroup",
    request_body = CreateGroupRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 201, description = "Created", body = Envelope<GroupDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = UnknownUsers),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn create(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    body: web::Json<CreateGroupRequest>,
) -> Result<HttpResponse, ApiError> {
    let name = required(&body.name, "name")?;
    let members = existing_users(&state, &body.members, "members").await?;
    let name = GroupName::parse(name)?;
    let group = state
        .groups
        .create(session.user_id(), name, members)
        .await
        .map_err(|error| ApiError::from_group(error, "members"))?;
    Ok(HttpResponse::Created().json(Envelope::data(GroupDto::from(&group))))
}

/// A conversation I am a member of: a group with its members and their roles, or a direct
/// conversation with both members; each member with their read position.
///
/// 404 for a conversation I never was a member of (or none); 403 for a group I left or was
/// removed from.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{id}",
    tag = "conversation",
    operation_id = "getConversation",
    params(("id" = String, Path, description = "The conversation's id")),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The conversation: a group or a direct conversation (`kind`)",
            body = Envelope<ConversationDetailDto>),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn get(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path_conversation(&id)?;
    let me = session.user_id();
    let conversation = match state.messaging.direct_conversation(me, &id).await? {
        Some(direct) => ConversationDetailDto::Direct(DirectConversationDto::from(&direct)),
        None => ConversationDetailDto::Group(GroupDto::from(&state.groups.get(me, &id).await?)),
    };
    Ok(HttpResponse::Ok().json(Envelope::data(conversation)))
}

/// Renames a group (owner and admins).
#[utoipa::path(
    patch,
    path = "/api/v1/conversations/{id}",
    tag = "conversation",
    operation_id = "renameGroup",
    params(("id" = String, Path, description = "The group's id")),
    request_body = RenameRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "Renamed: the group as it is now", body = Envelope<GroupDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn rename(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    id: web::Path<String>,
    body: web::Json<RenameRequest>,
) -> Result<HttpResponse, ApiError> {
    let group = path_conversation(&id)?;
    let name = GroupName::parse(required(&body.name, "name")?)?;
    Ok(group_answer(&state.groups.rename(session.user_id(), &group, name).await?))
}

/// Adds members (owner and admins): all of them or, on any refusal, none.
///
/// 400 for a user listed twice or more members than `groups.max_members`; 404 naming every
/// id that is no user's; 409 naming those who are members already.
#[utoipa::path(
    post,
    path = "/api/v1/conversations/{id}/members",
    tag = "conversation",
    operation_id = "addMembers",
    params(("id" = String, Path, description = "The group's id")),
    request_body = AddMembersRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "Added: the group as it is now", body = Envelope<GroupDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = UnknownUsers),
        (status = 409, response = GroupConflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn add_members(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    id: web::Path<String>,
    body: web::Json<AddMembersRequest>,
) -> Result<HttpResponse, ApiError> {
    let group = path_conversation(&id)?;
    let users = existing_users(&state, &body.user_ids, "userIds").await?;
    Ok(group_answer(&state.groups.add_members(session.user_id(), &group, users).await?))
}

/// Removes a member (owner and admins; only the owner removes an admin, nobody the owner).
/// Removing myself is leaving. The removed member's last entry of the group is the one that
/// removes them.
#[utoipa::path(
    delete,
    path = "/api/v1/conversations/{id}/members/{userId}",
    tag = "conversation",
    operation_id = "removeMember",
    params(
        ("id" = String, Path, description = "The group's id"),
        ("userId" = String, Path, description = "The member's user id"),
    ),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "Removed: the group as it is now", body = Envelope<GroupDto>),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn remove_member(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let group = path_conversation(&path.0)?;
    let user = path_member(&path.1)?;
    Ok(group_answer(&state.groups.remove_member(session.user_id(), &group, &user).await?))
}

/// Makes a member an admin or a member again (the owner only).
///
/// 409 when the owner would give up their own role: ownership is handed over instead.
#[utoipa::path(
    put,
    path = "/api/v1/conversations/{id}/members/{userId}/role",
    tag = "conversation",
    operation_id = "setRole",
    params(
        ("id" = String, Path, description = "The group's id"),
        ("userId" = String, Path, description = "The member's user id"),
    ),
    request_body = RoleRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "Changed: the group as it is now", body = Envelope<GroupDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = GroupConflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn set_role(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    path: web::Path<(String, String)>,
    body: web::Json<RoleRequest>,
) -> Result<HttpResponse, ApiError> {
    let group = path_conversation(&path.0)?;
    let role = assignable_role(required(&body.role, "role")?)
        .ok_or_else(|| ApiError::invalid_field("role", "must be admin or member"))?;
    let user = path_member(&path.1)?;
    Ok(group_answer(&state.groups.set_role(session.user_id(), &group, &user, role).await?))
}

/// Hands ownership to another member (the owner only); I become an admin.
#[utoipa::path(
    post,
    path = "/api/v1/conversations/{id}/owner",
    tag = "conversation",
    operation_id = "transferOwnership",
    params(("id" = String, Path, description = "The group's id")),
    request_body = OwnerRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "Handed over: the group as it is now", body = Envelope<GroupDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn transfer_ownership(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    id: web::Path<String>,
    body: web::Json<OwnerRequest>,
) -> Result<HttpResponse, ApiError> {
    let group = path_conversation(&id)?;
    let to = path_member(required(&body.user_id, "userId")?)?;
    Ok(group_answer(&state.groups.transfer_ownership(session.user_id(), &group, &to).await?))
}

/// Leaves a group. An owner who leaves hands over to the oldest admin, or else to the
/// oldest member.
#[utoipa::path(
    post,
    path = "/api/v1/conversations/{id}/leave",
    tag = "conversation",
    operation_id = "leaveGroup",
    params(("id" = String, Path, description = "The group's id")),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "Left: the group as I left it", body = Envelope<GroupDto>),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn leave(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let group = path_conversation(&id)?;
    Ok(group_answer(&state.groups.leave(session.user_id(), &group).await?))
}

/// Sends a message to a conversation of either kind, by its id: to a group's members, or to
/// the other user of a direct conversation (as `POST /api/v1/message/send/:receiverId` does).
/// Keys make retries safe as there.
#[utoipa::path(
    post,
    path = "/api/v1/conversations/{id}/messages",
    tag = "conversation",
    operation_id = "postMessage",
    params(
        ("id" = String, Path, description = "The conversation's id"),
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
        (status = 403, response = Forbidden),
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
    id: web::Path<String>,
    request: HttpRequest,
    body: web::Json<SendRequest>,
) -> Result<HttpResponse, ApiError> {
    let (conversation, message) = outgoing(&state, &session, &request, &body, || path_conversation(&id))?;
    let sent = state
        .messaging
        .send_to_conversation(
            session.user_id(),
            &conversation,
            message.body,
            message.client_id,
            message.reply_to,
        )
        .await?;
    Ok(sent_response(&sent))
}

/// One page of a conversation's history, oldest first: the newest `limit` entries before
/// `before`. A group member sees the entries from the one that added them on.
#[utoipa::path(
    get,
    path = "/api/v1/conversations/{id}/messages",
    tag = "conversation",
    operation_id = "conversationMessages",
    params(("id" = String, Path, description = "The conversation's id"), HistoryQuery),
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "The newest `limit` entries before `before`, oldest first",
            body = Envelope<Vec<MessageDto>>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn history(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    id: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let conversation = path_conversation(&id)?;
    let before = before(&query)?;
    let messages =
        state.messaging.conversation_history(session.user_id(), &conversation, before, query.limit).await?;
    let me = session.user_id();
    let page: Vec<MessageDto> = messages.iter().map(|m| MessageDto::seen_by(m, me)).collect();
    Ok(HttpResponse::Ok().json(Envelope::data(page)))
}

/// Marks a conversation read up to a message (never back): my other devices hear of it
/// (`conversationRead`), the other members get a receipt (`messagesRead`).
///
/// 404 for a message that is not one of the conversation's entries I can see.
#[utoipa::path(
    post,
    path = "/api/v1/conversations/{id}/read",
    tag = "conversation",
    operation_id = "markRead",
    params(("id" = String, Path, description = "The conversation's id")),
    request_body = ReadRequest,
    security(("bearerAuth" = []), ("cookieAuth" = [])),
    responses(
        (status = 200, description = "My read position now (unchanged when it was further already)",
            body = Envelope<ReadStateDto>),
        (status = 400, response = Validation),
        (status = 401, response = Unauthenticated),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 503, response = Unavailable),
    ),
)]
pub async fn mark_read(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    id: web::Path<String>,
    body: web::Json<ReadRequest>,
) -> Result<HttpResponse, ApiError> {
    let conversation = path_conversation(&id)?;
    let up_to = MessageId::parse(required(&body.up_to, "upTo")?)
        .map_err(|_| ApiError::invalid_field("upTo", "is not a message id"))?;
    let read = state.messaging.mark_read(session.user_id(), &conversation, &up_to).await?;
    Ok(HttpResponse::Ok()
        .json(Envelope::data(ReadStateDto { conversation_id: conversation.to_string(), seq: read.seq })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_are_no_ids_name_nobody() {
        let id = ConversationId::generate();
        assert_eq!(path_conversation(id.as_str()).unwrap(), id);
        for raw in ["", "x", &id.as_str().to_uppercase()] {
            assert_eq!(path_conversation(raw).unwrap_err().code(), "NOT_FOUND", "{raw}");
            assert_eq!(path_member(raw).unwrap_err().code(), "NOT_FOUND", "{raw}");
        }
    }

    #[test]
    fn a_list_of_users_is_required_not_empty_and_its_malformed_ids_are_set_apart() {
        assert_eq!(user_ids(&None, "members").unwrap_err().to_string(), "VALIDATION members is required");
        let empty = user_ids(&Some(Vec::new()), "userIds").unwrap_err();
        assert_eq!(empty.to_string(), "VALIDATION userIds must name at least one user");
        let user = UserId::generate();
        assert_eq!(user_ids(&Some(vec![user.to_string()]), "members").unwrap(), (vec![user.clone()], vec![]));
        let listed = vec!["x".into(), user.to_string(), "y".into(), "x".into()];
        assert_eq!(
            user_ids(&Some(listed), "members").unwrap(),
            (vec![user], vec!["x".to_owned(), "y".to_owned()])
        );
    }
}
