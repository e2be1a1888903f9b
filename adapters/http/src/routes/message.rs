use actix_web::{web, HttpResponse};
use ws_notifier::wire::MessageDto;

use super::required;
use crate::auth::CurrentUser;
use crate::dto::{ConversationDto, ConversationSummaryDto, Envelope, HistoryQuery, SendRequest};
use crate::error::ApiError;
use crate::state::AppState;

pub async fn send(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    receiver: web::Path<String>,
    body: web::Json<SendRequest>,
) -> Result<HttpResponse, ApiError> {
    let text = required(&body.message, "message")?;
    state.limits.send(session.user_id().as_str())?;
    let message = state.messaging.send(session.user_id(), &receiver, text).await?;
    Ok(HttpResponse::Created().json(Envelope::data(MessageDto::from(&message))))
}

pub async fn history(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
    other: web::Path<String>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let me = session.user_id();
    let view = state
        .messaging
        .history(me, &other, query.before.as_deref(), query.limit)
        .await?;
    Ok(HttpResponse::Ok().json(Envelope::data(ConversationDto::new(&view, me, &other))))
}

pub async fn conversations(
    state: web::Data<AppState>,
    CurrentUser(session): CurrentUser,
) -> Result<HttpResponse, ApiError> {
    let list = state.messaging.conversations(session.user_id()).await?;
    let list: Vec<ConversationSummaryDto> = list.iter().map(ConversationSummaryDto::from).collect();
    Ok(HttpResponse::Ok().json(Envelope::data(list)))
}
