//! Where a handshake's token travels: shared by every endpoint that authenticates a request,
//! so the REST routes, `/ws` and `/socket.io/` accept it from the same places.

use actix_web::http::header;
use actix_web::HttpRequest;

/// The cookie that register and login set.
pub const COOKIE_NAME: &str = "token";

/// The token a request carries: an `Authorization: Bearer` header first (explicit), then
/// the `token` cookie. Query strings are left to the endpoints that accept them.
pub fn request_token(req: &HttpRequest) -> Option<String> {
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
        })
        .filter(|t| !t.is_empty());
    bearer.or_else(|| req.cookie(COOKIE_NAME).map(|c| c.value().to_owned()).filter(|t| !t.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::cookie::Cookie;
    use actix_web::test::TestRequest;

    #[test]
    fn the_header_wins_over_the_cookie() {
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Bearer from-header"))
            .cookie(Cookie::new(COOKIE_NAME, "from-cookie"))
            .to_http_request();
        assert_eq!(request_token(&req).as_deref(), Some("from-header"));
    }

    #[test]
    fn the_cookie_is_used_without_a_header() {
        let req = TestRequest::default().cookie(Cookie::new(COOKIE_NAME, "c")).to_http_request();
        assert_eq!(request_token(&req).as_deref(), Some("c"));
    }

    #[test]
    fn other_schemes_and_empty_values_carry_no_token() {
        let req = TestRequest::default()
            .insert_header((header::AUTHORIZATION, "Basic abc"))
            .cookie(Cookie::new(COOKIE_NAME, ""))
            .to_http_request();
        assert_eq!(request_token(&req), None);
    }
}
