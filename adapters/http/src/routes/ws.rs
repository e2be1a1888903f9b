use actix_web::{web, HttpRequest, HttpResponse};
use domain::Cursor;
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
/// (400 when it is not a cursor), then hands the connection to the notifier's session,
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
    let session = state.accounts.authenticate(&token).await.map_err(ApiError::from)?;
    let since = Cursor::parse_optional(resume.since.as_deref()).map_err(ApiError::from)?;
    state.limits.socket_connect(session.user_id().as_str())?;
    chat_websocket::serve(
        &req,
        body,
        chat_websocket::Handshake {
            user: session.user_id().clone(),
            // The connection ends when this token is revoked or expires.
            token: chat_websocket::SessionToken {
                id: session.claims.token_id.clone(),
                expires_at: session.claims.expires_at,
            },
            since,
        },
        state.registry.clone(),
        state.realtime.clone(),
        state.messaging.clone(),
        state.settings.ws.clone(),
    )
}
