use actix_web::{web, HttpRequest, HttpResponse};

use crate::auth::request_token;
use crate::dto::TokenQuery;
use crate::error::ApiError;
use crate::state::AppState;

/// `GET /ws`: authenticates the handshake (header, cookie, or `?token=` for browsers, which
/// can't set headers on a WebSocket), then hands the connection to the notifier's session.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
    query: web::Query<TokenQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let token = request_token(&req)
        .or_else(|| query.into_inner().token.filter(|t| !t.is_empty()))
        .ok_or_else(ApiError::unauthenticated)?;
    let session = state.accounts.authenticate(&token).await.map_err(ApiError::from)?;
    state.limits.socket_connect(session.user_id().as_str())?;
    ws_notifier::serve(
        &req,
        body,
        session.user_id().clone(),
        state.registry.clone(),
        state.realtime.clone(),
        state.settings.ws.clone(),
    )
}
