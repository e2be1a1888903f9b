//! Who is calling: the token from the `token` cookie or an `Authorization: Bearer` header.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{time, Cookie};
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use application::Authenticated;
use chat_realtime::handshake::{presented_token, COOKIE_NAME};

use crate::error::ApiError;
use crate::state::{AppState, CookieSettings, SameSite};

/// The token a request carries in its `Authorization: Bearer` header or its cookie, as every
/// endpoint reads it (see [`presented_token`]). Query strings are left to the endpoints
/// that accept them.
pub fn request_token(req: &HttpRequest) -> Option<String> {
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    presented_token(authorization, req.cookie(COOKIE_NAME).as_ref().map(|c| c.value()), None)
}

/// An authenticated caller; a handler taking it answers 401 without a valid token.
pub struct CurrentUser(pub Authenticated);

impl FromRequest for CurrentUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, ApiError>>>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = request_token(req);
        Box::pin(async move {
            let (Some(state), Some(token)) = (state, token) else {
                return Err(ApiError::unauthenticated());
            };
            Ok(CurrentUser(state.accounts.authenticate(&token).await?))
        })
    }
}

/// The `token` cookie carrying `value` (empty and expired to clear it).
pub fn token_cookie(settings: &CookieSettings, value: &str, clear: bool) -> Cookie<'static> {
    let same_site = match settings.same_site {
        SameSite::Strict => actix_web::cookie::SameSite::Strict,
        SameSite::Lax => actix_web::cookie::SameSite::Lax,
        SameSite::None => actix_web::cookie::SameSite::None,
    };
    let max_age = if clear {
        time::Duration::ZERO
    } else {
        time::Duration::try_from(settings.max_age).unwrap_or(time::Duration::days(7))
    };
    Cookie::build(COOKIE_NAME, value.to_owned())
        .http_only(true)
        .path("/")
        .same_site(same_site)
        // Browsers drop `SameSite=None` cookies that are not `Secure`.
        .secure(settings.secure || settings.same_site == SameSite::None)
        .max_age(max_age)
        .finish()
}
