use actix_web::{web, HttpRequest, HttpResponse};
use chat_realtime::Handshake;
use domain::SyncCursor;
use serde::Deserialize;

use crate::auth::request_token;
use crate::dto::TokenQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// Where the handshake resumes the message stream.
#[derive(Deserialize)]
pub struct ResumeQuery {
    /// The last cursor the client processed; empty or absent: from now on.
    since: Option<String>,
}

/// `GET /ws`: authenticates the handshake (header, cookie, or `?token=`), reads `?since=`
/// (400 when it is not a cursor), then hands the connection to the WebSocket transport,
/// which replays the stored messages after `since` before the live events.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<TokenQuery>,
    resume: web::Query<ResumeQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let token = request_token(&req)
        .or_else(|| query.into_inner().token.filter(|t| !t.is_empty()))
        .ok_or_else(ApiError::unauthenticated)?;
    let session = state.accounts.authenticate_connection(&token).await.map_err(ApiError::from)?;
    let since = SyncCursor::parse_optional(resume.since.as_deref()).map_err(ApiError::from)?;
    state.limits.socket_connect(session.user_id().as_str())?;
    (state.transports.ws)(req, body, Handshake::new(&session, since)).await
}
